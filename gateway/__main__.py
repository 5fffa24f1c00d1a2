"""``python -m gateway``: the same as ``bluezone-gateway``."""

import sys

from gateway.cli import main

sys.exit(main())
