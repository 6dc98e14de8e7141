"""``python -m agentstream.consumers.cli`` is the ``agentstream`` command."""

import sys

from . import main

sys.exit(main())
