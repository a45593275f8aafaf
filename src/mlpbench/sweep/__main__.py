"""``python -m mlpbench.sweep``."""

import sys

from mlpbench.sweep.cli import main

sys.exit(main())
