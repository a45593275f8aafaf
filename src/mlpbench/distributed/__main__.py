"""``torchrun --nproc-per-node N -m mlpbench.distributed ...``: see :mod:`mlpbench.distributed.ranks`."""

from mlpbench.distributed.ranks import main

main()
