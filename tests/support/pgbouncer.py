"""PgBouncer (Debian's package) in transaction mode in front of the test PostgreSQL server."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from agentstream.consumers.broker import free_port

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
)


@contextlib.contextmanager
def pgbouncer(directory: Path, server_url: str, database: str, *, pool_size: int) -> Iterator[str]:
    """Run PgBouncer with ``pool_mode = transaction`` and ``pool_size`` server connections to
    ``database`` on ``server_url``'s server (trust authentication); yields the URL through it.
    As root it runs as ``nobody`` (PgBouncer refuses root)."""
    assert PGBOUNCER is not None
    server = urlsplit(server_url)
    port = free_port()
    user = server.username or "postgres"
    directory.chmod(0o755)
    (directory / "users.txt").write_text(f'"{user}" ""\n')
    config = directory / "pgbouncer.ini"
    config.write_text(
        f"[databases]\n{database} = host={server.hostname or '127.0.0.1'} "
        f"port={server.port or 5432} dbname={database} user={user}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 50\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for path in (config, directory / "users.txt"):
        path.chmod(0o644)
    command = [PGBOUNCER, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(config)]
    with (directory / "pgbouncer.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                said = (directory / "pgbouncer.log").read_text()
                raise RuntimeError(f"pgbouncer did not listen on {port}: {said}")
            time.sleep(0.05)
        yield f"postgresql://{user}@127.0.0.1:{port}/{database}"
    finally:
        process.terminate()
        process.wait(10)
