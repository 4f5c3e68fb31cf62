"""``python -m harness.gate ...``: the gate's command line (``harness.gate.cli``)."""

import sys

from harness.gate.cli import main

sys.exit(main())
