"""Data-parallel training: the backends' flat gradient buffer and layer-by-layer backprop, N gloo ranks against one
process on the global batch, argument checks before any process group, and failing ranks that stop every rank."""

import csv
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from layered_backprop import NET, backprop_pair, batch_for, flat

from mlpbench import BackendUnavailable, load
from mlpbench.backends import REGISTRY, Model
from mlpbench.backends.base import layer_spans
from mlpbench.backends.numpy_ref import NumpyModel
from mlpbench.backends.torch_nn import TorchCPUModel
from mlpbench.distributed import ALLREDUCE_COLUMNS, RANKS_COLUMNS, RankConfig, run_ranks, validate
from mlpbench.distributed.launch import failure_reason
from mlpbench.network import resolve
from mlpbench.verify import relative_error

CPU_DATA_PARALLEL = ("numpy", "c-serial", "torch-cpu")
BUFFER_BACKENDS = ("numpy", "c-serial", "c-omp", "torch-cpu")
TOLERANCE = 1e-5
# Rank processes import torch and run a few tiny steps: well under this on 2 shared cores.
RANK_TIMEOUT_S = 90


def options(backend):
    return {"threads": 1} if backend in ("c-omp", "torch-cpu") else {}


# --- the backends' support ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BUFFER_BACKENDS)
def test_gradient_buffer_is_the_gradient_storage(backend):
    model = load(backend, NET, seed=1, **options(backend))
    buffer = model.gradient_buffer()
    assert buffer.dim() == 1 and buffer.numel() == NET.n_params
    assert buffer.dtype == (torch.float64 if backend == "numpy" else torch.float32)
    for seed in (0, 1):  # the same storage after every backprop
        batch = batch_for(model, seed=seed)
        model.forward(batch)
        model.backprop(batch)
        assert model.gradient_buffer().data_ptr() == buffer.data_ptr()
        np.testing.assert_array_equal(buffer.numpy(), flat(model.grads()))
    before = model.params()
    buffer.zero_()  # averaging in place changes what update uses: here nothing is left to apply
    model.update(0.5)
    np.testing.assert_array_equal(flat(model.params()), flat(before))


@pytest.mark.parametrize("backend", BUFFER_BACKENDS)
def test_backprop_by_layer_reports_each_layer_once_final_and_before_the_next(backend):
    plain, layered, batch, buffer = backprop_pair(backend, **options(backend))
    seen = {}
    layered.backprop_by_layer(batch, lambda layer: seen.setdefault(layer, buffer.clone()))
    assert type(layered).overlaps_backprop
    assert list(seen) == list(range(NET.n_layers, 0, -1))
    spans = layer_spans(NET)
    for layer, snapshot in seen.items():
        for other, (start, stop) in enumerate(spans, start=1):
            done = torch.equal(snapshot[start:stop], buffer[start:stop])
            assert done == (other >= layer), (layer, other)  # final when reported; lower layers not yet
    for mine, theirs in zip(layered.grads(), plain.grads(), strict=True):
        for a, b in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(a, b)  # bit-identical to backprop


class NoFlatBuffer(TorchCPUModel):
    """torch-cpu with the interface's defaults: what a backend without the two capabilities gets."""

    gradient_buffer = Model.gradient_buffer
    backprop_by_layer = Model.backprop_by_layer
    overlaps_backprop = False


def test_interface_defaults_report_layers_after_backprop_and_name_the_missing_buffer():
    model = NoFlatBuffer(NET, NET.init_params(3), threads=1)
    reference = load("torch-cpu", NET, seed=3, threads=1)
    batches = {id(m): batch_for(m) for m in (model, reference)}
    for m in (model, reference):
        m.forward(batches[id(m)])
    reference.backprop(batches[id(reference)])
    order = []
    model.backprop_by_layer(batches[id(model)], order.append)
    assert order == [3, 2, 1]
    np.testing.assert_array_equal(flat(model.grads()), flat(reference.grads()))
    with pytest.raises(BackendUnavailable, match="gradient_buffer"):
        model.gradient_buffer()


# --- arguments checked before any process group ---------------------------------------------------------------

class NoBufferModel(NumpyModel):
    """A backend that keeps its gradients apart (no flat buffer), as any new backend does until it declares one."""

    name = "no-buffer"
    gradient_buffer = Model.gradient_buffer


@pytest.mark.parametrize(("change", "error", "message"), [
    ({"global_batch": 9}, ValueError, "not divisible by the world size 2"),
    ({"threads": 4096}, ValueError, "exceed the .* cores"),
    ({"rung": "sideways"}, ValueError, "rung"),
    ({"scaling": "linear"}, ValueError, "scaling"),
    ({"backend": "torch-gpu"}, BackendUnavailable, "no CUDA GPU"),
    ({"backend": "no-buffer"}, BackendUnavailable, "no-buffer: no gradient_buffer"),
    ({"backend": "bogus"}, ValueError, "unknown backend"),
    ({"steps": 0}, ValueError, "steps"),
    ({"round": 0}, ValueError, "round"),
])
def test_bad_arguments_are_rejected(change, error, message, monkeypatch):
    monkeypatch.setitem(REGISTRY, "no-buffer", (__name__, "NoBufferModel"))
    config = RankConfig(**{"backend": "numpy", "network": "digits", "world_size": 2, "global_batch": 8,
                           **change})
    if change.get("backend") == "torch-gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(error, match=message):
        validate(config)


def test_more_gpu_ranks_than_gpus_are_rejected(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="2 GPU ranks on this machine but only 1 GPUs"):
        validate(RankConfig("torch-gpu", "digits", 2, 8))


def test_more_threads_than_cores_pass_when_forced():
    validate(RankConfig("numpy", "digits", 2, 8, threads=4096, force=True))


def test_launcher_rejects_bad_arguments_before_starting_anything(tmp_path):
    with pytest.raises(ValueError, match="not divisible"):
        run_ranks("numpy", "digits", 2, global_batch=7, out_dir=tmp_path)
    with pytest.raises(TypeError, match="unknown options: colour"):
        run_ranks("numpy", "digits", 2, global_batch=8, out_dir=tmp_path, colour="red")
    assert not (tmp_path / "ranks.csv").read_text().strip().count("\n")  # the header only


@pytest.mark.parametrize(("backend", "network", "world_size", "batch", "message"), [
    ("numpy", "digits", 2, 7, "ValueError: global batch 7 is not divisible by the world size 2"),
    ("numpy", "digits", 0, 8, "ValueError: world_size: must be >= 1, got 0"),
    ("numpy", "no-such-net", 2, 8, "ValueError: "),
    # The fused kernel's width limit, from its class: no process starts (no GPU needed to know it).
    ("cuda-fused", "mnist", 1, 8, "ValueError: cuda-fused runs networks up to 512 wide"),
])
def test_a_sweep_records_a_configuration_that_cannot_run_and_goes_on(tmp_path, backend, network, world_size,
                                                                      batch, message):
    rows = run_ranks(backend, network, world_size, global_batch=batch, out_dir=tmp_path, record_invalid=True)
    assert [(row["status"], row["stage"]) for row in rows] == [("failed", "")]
    assert rows[0]["reason"].startswith(message), rows[0]["reason"]
    assert not (tmp_path / "ranks.log").exists()  # no torchrun was started


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank, world_size, port):
    return {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1"}


def start_ranks(args, world_size=2):
    port = free_port()
    return [subprocess.Popen([sys.executable, "-m", "mlpbench.distributed", *args], env=rank_env(r, world_size, port),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for r in range(world_size)]


def finish(processes):
    start = time.monotonic()
    outputs = [p.communicate(timeout=RANK_TIMEOUT_S)[0] for p in processes]
    return [p.returncode for p in processes], outputs, time.monotonic() - start


def test_rank_program_rejects_bad_arguments_before_the_process_group():
    # Nobody listens on the rendezvous port: a rank that tried to join would wait there until its timeout.
    codes, outputs, _ = finish(start_ranks(["--network", "digits", "--backend", "numpy", "--global-batch", "9",
                                            "--timeout-s", "600"]))
    assert codes == [2, 2], outputs
    for rank, output in enumerate(outputs):
        assert f"rank {rank} failed: ValueError: global batch 9 is not divisible by the world size 2" in output


# --- N ranks against one process --------------------------------------------------------------------------------

GLOBAL_BATCH, STEPS, LR = 8, 3, 0.5


def _train_rank(rank, world_size, port, out_dir):
    """One gloo rank: every CPU backend and both rungs, ``STEPS`` data-parallel steps each."""
    import datetime as dt

    import torch.distributed as dist

    from mlpbench.distributed.ranks import (
        DataParallel,
        build_model,
        check_identical_params,
        global_batches,
        leave,
        shard,
    )

    os.environ.update(rank_env(rank, world_size, port))
    dist.init_process_group("gloo", timeout=dt.timedelta(seconds=60))
    for backend in CPU_DATA_PARALLEL:
        for rung in ("after-backprop", "overlapped"):
            config = RankConfig(backend, NET.name, world_size, GLOBAL_BATCH, rung=rung)
            model = build_model(config, config.batch_per_rank)
            check_identical_params(model, torch.device("cpu"))
            trainer = DataParallel(model, rung)
            for X, y in global_batches(NET, GLOBAL_BATCH, STEPS, seed=5):
                trainer.step(model.prepare(*shard(X, y, rank, world_size)), LR)
            if rank == 0:
                np.savez(out_dir / f"{backend}-{rung}.npz", *[a for pair in model.params() for a in pair])
    dist.barrier()  # no rank leaves while another still talks to it
    dist.destroy_process_group()
    leave(0)  # as the rank program does: no interpreter teardown (see leave)


def test_two_gloo_ranks_train_like_one_process_on_the_global_batch(tmp_path):
    from mlpbench.distributed.ranks import global_batches

    assert resolve(NET.name) == NET
    context = multiprocessing.get_context("spawn")
    port = free_port()
    ranks = [context.Process(target=_train_rank, args=(r, 2, port, tmp_path)) for r in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(RANK_TIMEOUT_S)
    codes = [process.exitcode for process in ranks]
    for process in ranks:
        if process.is_alive():
            process.kill()
    assert codes == [0, 0]
    for backend in CPU_DATA_PARALLEL:
        reference = load(backend, NET, seed=0)
        start = flat(reference.params())
        for X, y in global_batches(NET, GLOBAL_BATCH, STEPS, seed=5):
            reference.step(X, y, LR)
        expected = [a for pair in reference.params() for a in pair]
        assert relative_error(flat(reference.params()), start) > 1e-2  # the steps moved the parameters
        for rung in ("after-backprop", "overlapped"):
            with np.load(tmp_path / f"{backend}-{rung}.npz") as saved:
                got = [saved[f"arr_{i}"] for i in range(len(expected))]
            for index, (mine, ref) in enumerate(zip(got, expected, strict=True)):
                assert relative_error(mine, ref) <= TOLERANCE, (backend, rung, index)


# --- failures stop every rank ----------------------------------------------------------------------------------

FAULT_ARGS = ["--network", NET.name, "--backend", "numpy", "--global-batch", "8", "--steps", "2",
              "--allreduce-sizes", "", "--timeout-s", "30"]


@pytest.mark.parametrize(("kind", "message"), [("raise", "rank 1 failed: RuntimeError: fault injected on rank 1"),
                                               ("exit", None)])
def test_a_failing_rank_stops_every_rank_quickly(kind, message):
    codes, outputs, seconds = finish(start_ranks([*FAULT_ARGS, "--inject-fault", f"1:2:{kind}"]))
    assert all(code != 0 for code in codes), (codes, outputs)
    assert seconds < 30  # well before the process-group timeout: the peers notice at once
    if message:
        assert message in outputs[1]
    else:
        assert codes[1] == -9  # killed
    assert "rank 0 failed:" in outputs[0]


def read_table(path):
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_launcher_writes_rows_and_records_a_failed_configuration(tmp_path):
    common = {"global_batch": 8, "out_dir": tmp_path, "timeout_s": RANK_TIMEOUT_S, "steps": 3, "warmup": 1,
              "allreduce_sizes": (4096,), "allreduce_repeats": 3}
    rows = run_ranks("c-serial", NET.name, 2, rung="overlapped", **common)
    columns, written = read_table(tmp_path / "ranks.csv")
    assert tuple(columns) == RANKS_COLUMNS
    assert [row["stage"] for row in rows] == ["forward", "backprop", "allreduce", "update", "step"]
    assert written == rows
    for row in rows:
        assert row["status"] == "ok" and row["world_size"] == "2" and row["pg_backend"] == "gloo"
        assert float(row["median_s"]) > 0 and float(row["err_params"]) <= TOLERANCE
    allreduce = rows[2]
    assert int(allreduce["bytes"]) == NET.n_params * 4
    assert float(allreduce["busbw_gbps"]) == pytest.approx(float(allreduce["algbw_gbps"]))  # 2 (n-1)/n = 1
    assert "allreduce  median" in (tmp_path / "ranks.log").read_text()  # rank 0's summary
    columns, ceiling = read_table(tmp_path / "allreduce.csv")
    assert tuple(columns) == ALLREDUCE_COLUMNS
    # The size asked for and the gradient buffer's, each as an all-reduce and as a copy.
    assert [(row["pg_backend"], int(row["bytes"])) for row in ceiling] == [
        ("gloo", NET.n_params * 4), ("memcpy", NET.n_params * 4), ("gloo", 4096), ("memcpy", 4096)]

    # A second round of the same configuration: a launch of its own, recorded under its own key.
    again = run_ranks("c-serial", NET.name, 2, rung="overlapped", round=2, **common)
    assert {row["key"] for row in again} == {rows[0]["key"] + "|round2"}
    assert {row["round"] for row in again} == {"2"} and {row["round"] for row in rows} == {"1"}

    failed = run_ranks("numpy", NET.name, 2, extra_args=("--inject-fault", "1:1:bad-input"), **common)
    assert [(row["status"], row["stage"]) for row in failed] == [("failed", "")]
    assert failed[0]["reason"].startswith("rank 1 failed: ValueError: X: contains NaN or Inf")

    # A backend without a flat gradient buffer cannot train data-parallel: recorded as skipped, with the reason.
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(REGISTRY, "no-buffer", (__name__, "NoBufferModel"))
        skipped = run_ranks("no-buffer", NET.name, 2, **common)
    assert [row["status"] for row in skipped] == ["skipped"]
    assert skipped[0]["reason"].startswith("no-buffer: no gradient_buffer()")

    slow = run_ranks("numpy", NET.name, 2, rung="overlapped", **{**common, "timeout_s": 1})
    assert [row["status"] for row in slow] == ["failed"] and slow[0]["reason"].startswith("timed out after 1 s")
    assert len(read_table(tmp_path / "ranks.csv")[1]) == 5 + 5 + 3  # the ok blocks and one row per failure


# What torchrun printed when rank 1 was killed while rank 0 waited for it (excerpt of a real run).
KILLED_OUTPUT = """\
mlpbench.distributed: rank 0 failed: RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:2176: \
Connection reset by peer.
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
mlpbench.distributed FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-29_10:25:52
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 17857)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 17857
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-29_10:25:52
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 17856)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


# Rank 1 raised; torchrun then ended rank 0 with SIGTERM before it could say anything.
TORN_DOWN_OUTPUT = """\
mlpbench.distributed: rank 1 failed: ValueError: X: contains NaN or Inf
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
mlpbench.distributed FAILED
------------------------------------------------------------
Failures:
[0]:
  time      : 2026-11-29_15:31:02
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 1416)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 1416
------------------------------------------------------------
Root Cause (first observed failure):
[1]:
  time      : 2026-11-29_15:31:02
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : 1 (pid: 1417)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


def test_failure_reason_names_the_failed_rank_before_the_peers_torchrun_ended():
    assert failure_reason(TORN_DOWN_OUTPUT) == (
        "rank 1 failed: ValueError: X: contains NaN or Inf; rank 0 died: Signal 15 (SIGTERM) received by PID 1416")


def test_failure_reason_names_a_killed_rank_before_the_peers_it_took_down():
    assert failure_reason(KILLED_OUTPUT) == (
        "rank 1 died: Signal 9 (SIGKILL) received by PID 17857; rank 0 failed: RuntimeError: "
        "[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:2176: Connection reset by peer.")


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie, not yet reaped, counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_a_rank_ends_with_the_process_that_started_it():
    # torchrun starts each rank in a session of its own, as this parent starts its child: when the parent ends,
    # the child, having asked for it as a rank does first, is ended too instead of sleeping on.
    child = ("from mlpbench.distributed.ranks import end_with_the_launcher; end_with_the_launcher(); "
             "print('ready', flush=True); import time; time.sleep(60)")
    parent = ("import subprocess, sys; "
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE, "
              "stderr=subprocess.DEVNULL, text=True, start_new_session=True); "
              "assert p.stdout.readline() == 'ready\\n'; print(p.pid, flush=True)")
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=60, check=True)
    pid = int(done.stdout)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
