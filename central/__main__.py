"""``python -m central``: the ``bluezone-central`` command line."""

import sys

from central.cli import main

sys.exit(main())
