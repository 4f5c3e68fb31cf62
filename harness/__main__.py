"""``python -m harness`` == the ``rlgauge`` console script."""

import sys

from harness.cli import main

sys.exit(main())
