"""``python -m polyasr_client``: the ``polyasr`` command."""

import sys

from polyasr_client.cli import main

sys.exit(main())
