"""A disk that refuses writes, for real: the kernel's file size limit (``RLIMIT_FSIZE``).

Past the limit, a write to a regular file is cut short at the limit and the next one fails
with EFBIG, as a full disk cuts and fails them with ENOSPC. The limit is the whole test
process's (not its sockets' or pipes'), so use it around the code under test only; the
``SIGXFSZ`` signal that would kill the process is ignored meanwhile.
"""

from __future__ import annotations

import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def files_limited_to(size: int) -> Iterator[None]:
    """Within the block, no file of this process grows past ``size`` bytes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
