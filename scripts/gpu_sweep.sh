#!/usr/bin/env bash
# The sweep of a GPU host in named parts that share one run folder (results/$RUN_ID), each resumed where an
# earlier call stopped, all within DEADLINE seconds from the start; packs the run into $OUT/run.tar.gz.
#
#   PARTS=main,endtoend,ranks,ranks-gpu,compile scripts/gpu_sweep.sh     (the default: every part, in order)
#
#   main       every study but end-to-end and ranks, for every backend but the compiling one
#   endtoend   end-to-end training of the same backends
#   ranks      data-parallel CPU ranks (the preset's networks, backends and world sizes)
#   ranks-gpu  one-GPU NCCL ranks on the large network
#   compile    torch-gpu-compile on the small networks and end to end (minutes of compilation per shape)
#
# Not in the default, for a host of several GPUs (one rank per GPU, 1, 2, 4, ... up to the GPUs it has; the
# committed results/h200x2-17430aa was taken with these two on two GPUs, in one call):
#
#   gpus-weak    large, 1024 rows per GPU: torch-gpu and cuda-opt, both all-reduce rungs
#   gpus-strong  mnist (256 rows) and moons-5h300 (32 rows) split over the GPUs: torch-gpu, cuda-opt and
#                cuda-fused (recorded as failed, with the reason, on networks wider than it takes)
#   gpus-rounds  the same strong scaling, all-reduce after backprop, in RANK_ROUNDS rounds (default 4) of
#                launches: every configuration once a round, so that each speed-up is read round by round
#
# The ranks parts launch each configuration in the preset's three rounds (rank_rounds), gpus-rounds in RANK_ROUNDS.
# A call that runs out of DEADLINE leaves the rest to a later call with the same RUN_ID (the folder carried).
# Give the commit of the tree sent to the host in MLPBENCH_GIT_COMMIT: a copied .git may hold another HEAD.
set -uo pipefail
RUN_ID=${RUN_ID:-h200}
PARTS=${PARTS:-main,endtoend,ranks,ranks-gpu,compile}
DEADLINE=$((SECONDS + ${DEADLINE:-480}))
LOG=${OUT:-.}/sweep.log
part() {
    [[ ",$PARTS," == *",$1,"* ]] || return 0
    local name=$1
    shift
    left=$((DEADLINE - SECONDS))
    ((left > 10)) || { echo "no time left for part $name" | tee -a "$LOG"; return; }
    timeout -s INT "$left" python3 -m mlpbench.sweep --preset gpu-host --results results --run-id "$RUN_ID" \
        --no-progress "$@" >>"$LOG" 2>&1
    echo "part $name exit $? after $SECONDS s" | tee -a "$LOG"
}
main_backends=$(python3 -c "from mlpbench.backends import BACKENDS, model_class
print(','.join(b for b in BACKENDS if not model_class(b).compiles_per_shape))")
part main --backends "$main_backends" --studies stages,threads,batch,width,ladder,training,lineprofile
part endtoend --backends "$main_backends" --studies endtoend
part ranks --studies ranks
part ranks-gpu --studies ranks --rank-backends torch-gpu,cuda-opt --rank-networks large:1024 --rank-steps 10
part compile --backends torch-gpu-compile --studies stages,endtoend --networks digits:32,moons-5h300:32
part gpus-weak --studies ranks --rank-backends torch-gpu,cuda-opt --rank-networks large:1024 --scaling weak
part gpus-strong --studies ranks --rank-backends torch-gpu,cuda-opt,cuda-fused \
    --rank-networks mnist:256,moons-5h300:32 --scaling strong
part gpus-rounds --studies ranks --rank-backends torch-gpu,cuda-opt,cuda-fused \
    --rank-networks mnist:256,moons-5h300:32 --scaling strong --rank-rungs after-backprop \
    --rank-rounds "${RANK_ROUNDS:-4}"
tar czf "${OUT:-.}/run.tar.gz" -C results "$RUN_ID"
grep -i "warning" "$LOG" | head -5
