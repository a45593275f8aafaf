"""The benchmark sweep: every backend × network × batch size × thread count, checked, then timed stage by stage.

Studies (each one a list of units of work, each unit recorded as soon as it finishes):

``stages``       per-stage breakdown of every backend on the study's networks (``networks``: ``name:batch``);
``threads``      thread scaling of the threaded backends (``c-omp``, ``torch-cpu``) over ``threads`` on
                 ``thread_networks`` and the stages study's networks (so each has its best count measured);
``batch``        batch-size effect on ``batch_network`` (the original study's second experiment);
``width``        square networks ``w-w-...-w`` (``width_layers`` layers) over ``widths`` at ``width_batch``;
``ladder``       matrix-product kernel ladders as a fraction of the library ceiling measured in the same run;
``training``     loss and accuracy per epoch of every available backend on ``dataset``;
``endtoend``     end-to-end training of each task of :data:`mlpbench.training.TASKS`, timed from the first
                 step to the last result with the data set resident where the backend computes;
``ranks``        data-parallel training under ``torchrun`` (:mod:`mlpbench.distributed`) on 1, 2, 4, ... ranks,
                 strong and weak scaling, all-reduce after backprop or overlapped with it;
``lineprofile``  line-by-line profile of the Python driver of a training step (:mod:`mlpbench.profiling`).

Before a configuration is timed, :func:`mlpbench.verify.check_stages` checks it against the float64
reference at the same network, on ``min(batch, verify_batch)`` samples (so huge networks are checked on a
reduced batch). Its worst relative errors and its worst scaled error (error in units of float32 rounding of
the magnitude each quantity is computed from) go into every row; a scaled error above ``scaled_tolerance``
records the configuration as ``failed``, not timed. A backend that cannot run here (``BackendUnavailable``)
is ``skipped``; any other exception is ``failed``; the reason is recorded and the sweep goes on.

Thread counts are explicit and come from what each backend class declares: ``threaded`` backends (``c-omp``,
``torch-cpu``) get theirs as an option; around every configuration the shared OpenMP runtime (through PyTorch)
and NumPy's BLAS pool are pinned to the configuration's count (a single-threaded build such as ``c-serial``:
its ``fixed_threads``; the ``numpy`` reference: the largest count; GPU backends: all cores for the host side).

Results go to ``<results>/<run-id>/``:

``meta.json``        parameters, machine description (:func:`mlpbench.machine.describe`), sessions, times;
``rows.csv``         one row per configuration × stage (see :data:`ROW_COLUMNS`); a configuration that was
                     not timed has one row with an empty ``stage``;
``ladder.csv``       one row per matrix-product implementation (:data:`LADDER_COLUMNS`);
``training.csv``     one row per backend × epoch (:data:`TRAINING_COLUMNS`);
``endtoend.csv``     one row per task × backend × epoch (:data:`ENDTOEND_COLUMNS`);
``ranks.csv``        one row per data-parallel configuration × stage, ``allreduce.csv`` the plain all-reduce
                     ceiling (:data:`mlpbench.distributed.RANKS_COLUMNS`, ``ALLREDUCE_COLUMNS``);
``lineprofile.csv``  one row per backend × profiled function (:data:`mlpbench.profiling.PROFILE_COLUMNS`),
                     with the full line-by-line listings in ``lineprofile/<backend>.txt``.

Crash safety: each table is append-only; a unit's rows are written in one ``write`` and ``fsync``-ed, each row
carrying its unit's ``key`` and row count ``block_rows``. On start the tables are read back, a torn last
line or an incomplete block is cut off, and units already present are skipped, so re-running with the same
run id resumes a killed sweep without losing or duplicating rows. ``attempts.log`` lists every unit started;
one that was started twice without finishing (it crashed the process) is recorded as ``failed`` on resume.

The package follows those parts: :mod:`~mlpbench.sweep.params` (parameters and presets),
:mod:`~mlpbench.sweep.planning`, :mod:`~mlpbench.sweep.tables` (the crash-safe tables),
:mod:`~mlpbench.sweep.measuring` (one configuration), :mod:`~mlpbench.sweep.ladders`,
:mod:`~mlpbench.sweep.curves` (training curves), :mod:`~mlpbench.sweep.runner` (a run) and
:mod:`~mlpbench.sweep.cli` (``python -m mlpbench.sweep``).
"""

from mlpbench.sweep.cli import main
from mlpbench.sweep.curves import training_curve
from mlpbench.sweep.ladders import LadderUnavailable, cpu_ladder, cuda_matmul_hook, gpu_ladder, native_gemm_hook
from mlpbench.sweep.measuring import Unavailable, describe_error, estimate_step, measure, stage_columns
from mlpbench.sweep.params import (
    PRESETS,
    SCHEMA_VERSION,
    STUDIES,
    TRAINING_NETWORKS,
    SweepParams,
    default_thread_counts,
    make_params,
    split_network,
)
from mlpbench.sweep.planning import Config, backend_threads, plan, width_network
from mlpbench.sweep.runner import Attempts, Unit, default_run_id, run
from mlpbench.sweep.tables import (
    ENDTOEND_COLUMNS,
    ERROR_QUANTITIES,
    LADDER_COLUMNS,
    ROW_COLUMNS,
    TRAINING_COLUMNS,
    BlockTable,
    write_atomic,
)

__all__ = [
    "ENDTOEND_COLUMNS", "ERROR_QUANTITIES", "LADDER_COLUMNS",
    "PRESETS", "ROW_COLUMNS", "SCHEMA_VERSION", "STUDIES", "TRAINING_COLUMNS",
    "TRAINING_NETWORKS", "Attempts", "BlockTable", "Config", "LadderUnavailable", "SweepParams", "Unavailable",
    "Unit", "backend_threads", "cpu_ladder", "cuda_matmul_hook", "default_run_id", "default_thread_counts",
    "describe_error", "estimate_step", "gpu_ladder", "main", "make_params", "measure", "native_gemm_hook", "plan",
    "run", "split_network", "stage_columns", "training_curve", "width_network", "write_atomic",
]
