#!/usr/bin/env bash
# The sweep of a GPU host in parts that share one run folder (results/$RUN_ID), each resumed where an earlier
# call stopped, all within DEADLINE seconds from the start: the main studies without the compiling backend,
# data-parallel CPU ranks, one-GPU NCCL ranks on the large network, then torch-gpu-compile on the small
# networks (its compilation takes minutes per shape, so it comes last). Packs the run into $OUT/run.tar.gz.
# Give the commit of the tree sent to the host in MLPBENCH_GIT_COMMIT: a copied .git may hold another HEAD.
set -uo pipefail
RUN_ID=${RUN_ID:-h200}
DEADLINE=$((SECONDS + ${DEADLINE:-480}))
LOG=${OUT:-.}/sweep.log
part() {
    left=$((DEADLINE - SECONDS))
    ((left > 10)) || { echo "no time left for: $*" | tee -a "$LOG"; return; }
    timeout -s INT "$left" python3 -m mlpbench.sweep --preset gpu-host --results results --run-id "$RUN_ID" \
        --no-progress "$@" >>"$LOG" 2>&1
    echo "part exit $? after $SECONDS s: $*" | tee -a "$LOG"
}
main_backends=$(python3 -c "from mlpbench.backends import BACKENDS, model_class
print(','.join(b for b in BACKENDS if not model_class(b).compiles_per_shape))")
part --backends "$main_backends" --studies stages,threads,batch,width,ladder,training,endtoend,lineprofile
part --studies ranks
part --studies ranks --rank-backends torch-gpu,cuda-opt --rank-networks large:1024 --rank-steps 10
part --backends torch-gpu-compile --studies stages --networks digits:32,moons-5h300:32
tar czf "${OUT:-.}/run.tar.gz" -C results "$RUN_ID"
grep -i "warning" "$LOG" | head -5
