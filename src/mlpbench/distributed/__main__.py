"""``torchrun --nproc-per-node N -m mlpbench.distributed ...``: see :mod:`mlpbench.distributed.ranks`."""

import sys

from mlpbench.distributed.ranks import main

sys.exit(main())
