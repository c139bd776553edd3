"""``python -m gateway`` is the ``agentgate`` command."""

import sys

from gateway.cli import main

sys.exit(main())
