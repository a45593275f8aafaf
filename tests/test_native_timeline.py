"""The C library's per-thread timeline (``enable_timeline`` / ``timeline``), the partition it reveals (every
tile of every product computed exactly once, barriers per step), results that do not depend on the timeline
or the thread count, and ``scripts/cpu_timeline.py`` end to end on a tiny budget."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mlpbench import load, native
from mlpbench.backends.native_c import TIMELINE_DTYPE, timeline_kinds
from mlpbench.network import Network
from mlpbench.verify import random_batch as reference_batch

ROOT = Path(__file__).resolve().parents[1]
KINDS = {name: code for code, name in timeline_kinds().items()}
# The micro-kernel tile of each kernel set (rows x columns of C).
TILES = {"portable": (6, 16), "avx2": (6, 16), "avx512": (8, 32)}

NARROW = Network((2, 30, 300, 40, 1), "sigmoid", "sigmoid-bce")   # narrow and wide layers, one output
SOFTMAX = Network((64, 128, 10), "tanh", "softmax-ce")
WIDE_OUTPUT = Network((5, 40, 33), "relu", "softmax-ce")          # 33 outputs: more than one column sliver


def random_batch(network, batch, seed):
    return reference_batch(network, batch, np.random.default_rng(seed))


def stepped(network, batch, threads, *, timeline=False, steps=2, isa="auto", seed=3, kernel=3):
    model = load("c-omp", network, seed=0, threads=threads, isa=isa, kernel=kernel)
    X, y = random_batch(network, batch, seed=seed)
    prepared = model.prepare(X, y)
    if timeline:
        model.enable_timeline()
    for _ in range(steps):
        model.train_step(prepared, 0.05, 1e-3)
    return model


#: Plans of the fused step (``MLP_STEP_PLAN``) the library keeps; the first is its default (change 12's rule).
PLANS = (12, 8, 11, 16)
DEFAULT_PLAN = PLANS[0]


def stepped_with_plan(monkeypatch, plan, *args, **kwargs):
    monkeypatch.setenv("MLP_STEP_PLAN", str(plan))
    model = stepped(*args, **kwargs)
    monkeypatch.delenv("MLP_STEP_PLAN")
    return model


def padded(m, n, k, tile):
    mr, nr = tile
    return -(-m // mr) * mr * (-(-n // nr) * nr) * k


def test_off_by_default_and_after_disable():
    model = stepped(SOFTMAX, 8, 2)
    with pytest.raises(RuntimeError, match="timeline is off"):
        model.timeline()
    model.enable_timeline()
    model.train_step(model.prepare(*random_batch(SOFTMAX, 8, seed=1)), 0.1)
    assert len(model.timeline()) > 0
    model.disable_timeline()
    with pytest.raises(RuntimeError, match="timeline is off"):
        model.timeline()


@pytest.mark.parametrize("bad", [0, -1, 1 << 25])
def test_bad_event_counts(bad):
    with load("c-omp", SOFTMAX, threads=1) as model, pytest.raises(ValueError):
        model.enable_timeline(bad)


def test_events_that_do_not_fit_are_an_error():
    model = stepped(SOFTMAX, 8, 2)
    model.enable_timeline(3)
    model.train_step(model.prepare(*random_batch(SOFTMAX, 8, seed=1)), 0.1)
    with pytest.raises(RuntimeError, match="did not fit"):
        model.timeline()


@pytest.mark.parametrize("threads", [1, 2, 3, 16])
@pytest.mark.parametrize("network,batch", [(NARROW, 32), (SOFTMAX, 32), (NARROW, 7), (SOFTMAX, 256),
                                           (WIDE_OUTPUT, 20), (NARROW, 3), (SOFTMAX, 1)])
@pytest.mark.parametrize("isa", ["portable", "auto"])
def test_every_tile_computed_once(network, batch, threads, isa):
    """The multiply-adds of each product, summed over threads, are the product's padded size: no tile is
    skipped or computed twice, whatever the thread count. A forward layer of a few rows computed as dot
    products (at most MLP_DOT_ROWS rows, MLP_DOT_MIN_COLS outputs), and a weight gradient of depth 1 (batch 1)
    computed as an outer product, pad nothing: their exact size."""
    model = stepped(network, batch, threads, timeline=True, isa=isa)
    events = model.timeline()
    assert events.dtype == TIMELINE_DTYPE
    lib = native.library("omp")
    dots = batch <= lib.MLP_DOT_ROWS
    tile = TILES[model.isa]
    # Plans 11 and 16 (the default's choice on 8 threads or more here) compute the hidden layers' forward
    # products and the input gradients into them transposed: (n_out, batch) and (n_in, batch).
    transposed = model.step_plan(batch) in (11, 16)
    hidden = len(network.layer_shapes) - 1
    for index, (n_out, n_in) in enumerate(network.layer_shapes, start=1):
        layer = events[events["layer"] == index]
        forward = layer[layer["kind"] == KINDS["forward"]]
        weight = layer[layer["kind"] == KINDS["weight_grad"]]
        assert forward["work"].sum() == (padded(n_out, batch, n_in, tile) if transposed and index <= hidden
                                         else batch * n_out * n_in if dots and n_out >= lib.MLP_DOT_MIN_COLS
                                         else padded(batch, n_out, n_in, tile))
        assert weight["work"].sum() == (n_out * n_in if batch == 1 else padded(n_out, n_in, batch, tile))
        inputs = layer[layer["kind"] == KINDS["input_grad"]]
        assert inputs["work"].sum() == (0 if index == 1 else padded(n_in, batch, n_out, tile) if transposed
                                        else padded(batch, n_in, n_out, tile))
        # Every element of the layer's update and bias gradient belongs to one thread.
        assert layer[layer["kind"] == KINDS["update"]]["work"].sum() == n_out * n_in + n_out
        assert layer[layer["kind"] == KINDS["bias_grad"]]["work"].sum() == n_out * batch


def expected_barriers(network, kernel, tile):
    """Barriers of one train_step inside its region (the closing one not counted). The packed rung: one
    per forward layer, the last one's merged with the output rows when the outputs fit one column sliver,
    one after the output rows, and one per backprop layer but the first (whose update needs none). The
    loop rungs: one per forward layer, the output rows, and every backprop layer."""
    layers = network.n_layers
    if kernel != 3:
        return 2 * layers + 1
    return 2 * layers - (1 if network.n_outputs <= tile[1] else 0)


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("kernel", [3, 1])
@pytest.mark.parametrize("threads", [1, 2, 5])
@pytest.mark.parametrize("network", [NARROW, SOFTMAX, WIDE_OUTPUT])
def test_events_per_thread_are_ordered_and_barriers_agree(monkeypatch, network, threads, kernel, plan):
    """Under every plan each thread's events follow one another without overlapping (no work is counted in
    two events), and every thread meets the same barriers."""
    model = stepped_with_plan(monkeypatch, plan, network, 16, threads, timeline=True, kernel=kernel)
    events = model.timeline()
    assert set(events["thread"]) == set(range(threads))
    assert (events["team"] == threads).all()
    barriers = []
    for thread in range(threads):
        mine = events[events["thread"] == thread]
        assert (mine["end_ns"] >= mine["start_ns"]).all()
        assert (mine["start_ns"][1:] >= mine["end_ns"][:-1]).all()
        assert (mine["pack_ns"] <= mine["end_ns"] - mine["start_ns"]).all()
        barriers.append(int((mine["kind"] == KINDS["barrier"]).sum()))
    assert len(set(barriers)) == 1
    assert barriers[0] == expected_barriers(network, kernel, TILES[model.isa])
    assert ((events["kind"] == KINDS["fork"]).sum(), (events["kind"] == KINDS["join"]).sum()) == (
        (threads, 1) if threads > 1 else (0, 0))


@pytest.mark.parametrize("network,batch", [(NARROW, 32), (SOFTMAX, 32), (NARROW, 3), (SOFTMAX, 200),
                                           (WIDE_OUTPUT, 50)])
def test_results_identical_for_any_thread_count_and_with_timeline(network, batch):
    """Parameters after three steps, bit for bit, for 1 to 16 threads and with the timeline on."""
    reference = stepped(network, batch, 1, steps=3).params()
    for threads, timeline in [(1, True), (2, False), (3, True), (4, False), (7, False), (16, True)]:
        params = stepped(network, batch, threads, steps=3, timeline=timeline).params()
        for (w, b), (w_ref, b_ref) in zip(params, reference, strict=True):
            np.testing.assert_array_equal(w, w_ref, err_msg=f"threads={threads} timeline={timeline}")
            np.testing.assert_array_equal(b, b_ref, err_msg=f"threads={threads} timeline={timeline}")


def test_separate_stages_record_their_own_call():
    model = stepped(SOFTMAX, 16, 2, timeline=True, steps=0)
    batch = model.prepare(*random_batch(SOFTMAX, 16, seed=5))
    model.forward(batch)
    kinds = set(model.timeline()["kind"])
    assert KINDS["forward"] in kinds and KINDS["weight_grad"] not in kinds
    model.backprop(batch)
    kinds = set(model.timeline()["kind"])
    assert {KINDS["output_grad"], KINDS["weight_grad"]} <= kinds and KINDS["forward"] not in kinds
    model.update(0.1)
    assert set(model.timeline()["kind"]) >= {KINDS["update"]}


def test_script_writes_json_and_table(tmp_path):
    spec = importlib.util.spec_from_file_location("cpu_timeline", ROOT / "scripts" / "cpu_timeline.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--cases", "digits:8,4-5-3:3", "--threads", "1,2", "--steps", "5", "--min-steps", "3",
                        "--timeline-steps", "3", "--budget-s", "2", "--blas", "--rounds", "2",
                        "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "timeline.json").read_text())
    assert all(len(r["rounds"]) == 2 and len(r["step"]["rounds_us"]) == 2 for r in report["results"])
    assert all(len(r["blas_step"]["rounds_us"]) == 2 for r in report["results"])
    assert [(r["case"], r["threads"]) for r in report["results"]] == [
        ("digits:8", 1), ("digits:8", 2), ("4-5-3:3", 1), ("4-5-3:3", 2)]
    first = report["results"][1]["timeline"]
    assert first["barriers_per_step"] == 2 * 2 - 1 + 1
    assert len(first["busy_us_per_thread"]) == 2
    text = (tmp_path / "timeline.txt").read_text()
    assert "speedup" in text and "2 interleaved rounds" in text and "work inflation" in text


def test_script_skips_blas_beyond_its_thread_limit(tmp_path):
    from mlpbench.backends import model_class

    spec = importlib.util.spec_from_file_location("cpu_timeline", ROOT / "scripts" / "cpu_timeline.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    threads = model_class("c-blas").max_threads() + 1
    assert script.main(["--cases", "4-5-3:3", "--threads", str(threads), "--steps", "3", "--min-steps", "3",
                        "--timeline-steps", "3", "--budget-s", "1", "--blas", "--out", str(tmp_path)]) == 0
    (result,) = json.loads((tmp_path / "timeline.json").read_text())["results"]
    assert "blas_step" not in result and "at most" in result["blas_skipped"]
    assert result["timeline"]["barriers_per_step"] == 2 * 2 - 1 + 1


@pytest.mark.parametrize("threads", [1, 2, 16])
@pytest.mark.parametrize("network,batch", [(NARROW, 32), (SOFTMAX, 32), (WIDE_OUTPUT, 50), (NARROW, 200)])
def test_fused_step_equals_the_three_stages(network, batch, threads):
    """train_step (output rows, updates and the packing of weights fused into its stretches) computes, bit
    for bit, what forward, backprop and update compute as separate calls."""
    X, y = random_batch(network, batch, seed=9)
    fused, staged = (load("c-omp", network, seed=0, threads=threads) for _ in range(2))
    for _ in range(2):
        fused.train_step(fused.prepare(X, y), 0.05, 1e-3)
        batch_ = staged.prepare(X, y)
        staged.forward(batch_)
        staged.backprop(batch_)
        staged.update(0.05, 1e-3)
    for (w, b), (w_ref, b_ref) in zip(fused.params(), staged.params(), strict=True):
        np.testing.assert_array_equal(w, w_ref)
        np.testing.assert_array_equal(b, b_ref)


def test_plan_from_the_environment(monkeypatch):
    assert load("c-omp", SOFTMAX, threads=2).plan == DEFAULT_PLAN
    # 9, 10, 13, 17, 22, 23, 24 and 25 were plans once, removed after the host measured them.
    for text, plan in [("8", 8), ("11", 11), ("12", 12), ("16", 16), ("", DEFAULT_PLAN),
                       ("7", DEFAULT_PLAN), ("9", DEFAULT_PLAN), ("10", DEFAULT_PLAN), ("13", DEFAULT_PLAN),
                       ("17", DEFAULT_PLAN), ("22", DEFAULT_PLAN), ("23", DEFAULT_PLAN), ("24", DEFAULT_PLAN),
                       ("25", DEFAULT_PLAN), ("x", DEFAULT_PLAN)]:
        monkeypatch.setenv("MLP_STEP_PLAN", text)
        assert load("c-omp", SOFTMAX, threads=2).plan == plan, text


@pytest.mark.parametrize("threads,batch,expected", [(1, 32, 8), (2, 32, 8), (4, 32, 8), (7, 32, 8), (8, 32, 16),
                                                    (16, 32, 16), (16, 144, 16), (16, 145, 8), (16, 256, 8),
                                                    (16, 4, 8), (16, 5, 16)])
def test_rule_picks_the_plan_per_step(threads, batch, expected):
    """The default (plan 12): plan 16 on at least 8 threads for batches of 5 to 144 rows on networks of three
    layers or more, where the host measured it faster than plans 8 and 11; plan 8 elsewhere (on a few rows the
    forward is dot products, which plan 16's transposed forward would not match)."""
    model = load("c-omp", NARROW, threads=threads, max_batch=batch)
    assert (model.plan, model.step_plan()) == (12, expected)
    assert load("c-omp", SOFTMAX, threads=threads, max_batch=batch).step_plan() == 8  # two layers: no hidden pair


def test_forced_plans_run_everywhere_they_apply(monkeypatch):
    for plan, threads, batch, expected in [(8, 16, 32, 8), (11, 1, 32, 11), (11, 16, 256, 8), (12, 16, 32, 16),
                                           (16, 1, 32, 16), (16, 16, 144, 16), (16, 16, 256, 8), (11, 2, 4, 8),
                                           (16, 16, 4, 8), (16, 16, 5, 16)]:
        monkeypatch.setenv("MLP_STEP_PLAN", str(plan))
        model = load("c-omp", NARROW, threads=threads, max_batch=batch)
        assert (model.plan, model.step_plan()) == (plan, expected), plan
    # Two layers: no hidden layer above the first, so no copy of W^T to pack; plan 16 runs as plan 11.
    assert load("c-omp", SOFTMAX, threads=16, max_batch=32).step_plan() == 11


@pytest.mark.parametrize("threads", [3, 16])
@pytest.mark.parametrize("network,batch", [(NARROW, 32), (SOFTMAX, 32), (WIDE_OUTPUT, 50)])
def test_results_identical_under_every_plan(monkeypatch, network, batch, threads):
    reference = stepped(network, batch, 1, steps=3).params()
    for plan in PLANS:
        params = stepped_with_plan(monkeypatch, plan, network, batch, threads, steps=3).params()
        for (w, b), (w_ref, b_ref) in zip(params, reference, strict=True):
            np.testing.assert_array_equal(w, w_ref, err_msg=f"plan {plan}")
            np.testing.assert_array_equal(b, b_ref, err_msg=f"plan {plan}")


WIDE_NARROW = Network((2, 300, 300, 300, 1), "sigmoid", "sigmoid-bce")  # the 5h300 network's shapes, shorter


# Wide and deep enough (600 x 600 weights, batch 96) that plan 8 shares its weight packing among 16 threads
# under either tile width: each product's k blocks times column slivers outnumber the team, and its split puts
# every column sliver in several threads' blocks (gemm_shares_b). The 5h300 shapes no longer do with 8 x 32
# tiles: k of 300 is one k block of 10 slivers.
SHARED_PACKING, SHARED_PACKING_BATCH = Network((2, 600, 600, 600, 1), "sigmoid", "sigmoid-bce"), 96


@pytest.mark.parametrize("threads", [5, 16])
@pytest.mark.parametrize("isa", ["portable", "auto"])
def test_shared_weight_packing_covers_every_row_once(monkeypatch, threads, isa):
    """Under plan 8 each packing of a product's weights for the team (the i-th pack_weights event of every
    thread) packs the product's k x round_up(n, nr) floats exactly, each thread whole slivers; plan 11 packs no
    weights for others (each thread packs the rows of W it owns)."""
    network, batch = SHARED_PACKING, SHARED_PACKING_BATCH
    for plan in PLANS:
        model = stepped_with_plan(monkeypatch, plan, network, batch, threads, timeline=True, isa=isa)
        events = model.timeline()
        nr = TILES[model.isa][1]
        packs = [events[(events["thread"] == t) & (events["kind"] == KINDS["pack_weights"])] for t in range(threads)]
        if model.step_plan(batch) == 11:
            assert all(len(p) == 0 for p in packs)
            continue
        if model.step_plan(batch) == 16:
            continue  # its owners' copies: test_plan_16_packs_each_copy_once_by_the_owners
        assert len({len(p) for p in packs}) == 1
        assert len(packs[0]) > 0 or threads < 16
        shapes = dict(enumerate(network.layer_shapes, start=1))
        for index in range(len(packs[0])):
            layer = {int(p["layer"][index]) for p in packs}
            assert len(layer) == 1
            n_out, n_in = shapes[layer.pop()]
            work = np.array([int(p["work"][index]) for p in packs])
            # The forward product's W^T (k = n_in) or the input gradient's W (k = n_out), in whole slivers.
            assert work.sum() in (n_in * -(-n_out // nr) * nr, n_out * -(-n_in // nr) * nr)
            assert all(w % nr == 0 for w in work)


def _per_thread(events, threads, kind, layer):
    """Each thread's work in one kind of event of one layer, summed."""
    return np.array([int(events[(events["thread"] == t) & (events["kind"] == KINDS[kind])
                                & (events["layer"] == layer)]["work"].sum()) for t in range(threads)])


@pytest.mark.parametrize("plan", [11, 16])
@pytest.mark.parametrize("threads", [5, 16])
def test_owned_rows_plans_keep_each_threads_rows(monkeypatch, threads, plan):
    """Plans 11 and 16: in every hidden layer, each thread's forward product, weight gradient and the input
    gradient of the layer above cover the same rows (the same multiply-adds per row), and every thread gets
    rows."""
    model = stepped_with_plan(monkeypatch, plan, WIDE_NARROW, 32, threads, timeline=True)
    assert model.step_plan(32) == plan
    events = model.timeline()
    mr, nr = TILES[model.isa]
    shapes = dict(enumerate(WIDE_NARROW.layer_shapes, start=1))
    for layer in range(1, len(shapes)):
        n_out, n_in = shapes[layer]
        forward = _per_thread(events, threads, "forward", layer) // (n_in * -(-32 // nr) * nr)  # rows
        weight = _per_thread(events, threads, "weight_grad", layer) // (32 * -(-n_in // nr) * nr)  # rows of dW
        below = _per_thread(events, threads, "input_grad", layer + 1) // (shapes[layer + 1][0] * -(-32 // nr) * nr)
        np.testing.assert_array_equal(forward, weight)
        np.testing.assert_array_equal(forward, below)
        assert forward.sum() == -(-n_out // mr) * mr
        assert (forward > 0).all() or -(-n_out // mr) < threads


@pytest.mark.parametrize("threads", [5, 16])
@pytest.mark.parametrize("isa", ["portable", "auto"])
def test_plan_16_packs_each_copy_once_by_the_owners(monkeypatch, threads, isa):
    """Plan 16: each hidden layer above the first has its W^T packed once per step for the team, each thread
    the rows of W it owns (those of its forward product, round_up(n_in, mr) floats each, the last thread's
    rows short of the tile padding); the first layer and the output layer are not packed for the team."""
    model = stepped_with_plan(monkeypatch, 16, WIDE_NARROW, 32, threads, timeline=True, isa=isa)
    assert model.step_plan(32) == 16
    events = model.timeline()
    mr, nr = TILES[model.isa]
    shapes = dict(enumerate(WIDE_NARROW.layer_shapes, start=1))
    for layer, (n_out, n_in) in shapes.items():
        packed = _per_thread(events, threads, "pack_weights", layer)
        if not 1 < layer < len(shapes):
            assert packed.sum() == 0, layer
            continue
        row = -(-n_in // mr) * mr
        assert packed.sum() == n_out * row, layer
        assert (packed % row == 0).all()
        forward_rows = _per_thread(events, threads, "forward", layer) // (n_in * -(-32 // nr) * nr)
        assert ((forward_rows - packed // row >= 0) & (forward_rows - packed // row < mr)).all(), layer


@pytest.mark.parametrize("isa", ["portable", "auto"])
@pytest.mark.parametrize("threads", [1, 16])
def test_each_layers_weights_are_updated_where_nothing_reads_them(monkeypatch, isa, threads):
    """Under every plan, each thread updates the first layer's W right after its block of the weight gradient
    (one update event of that layer, with the bias), and every other layer's b with its bias gradient, before
    the layer's input gradient. Every other layer's W (a second update event): a team of one thread updates it
    right after that input gradient, the last product that reads W, before the next layer down begins; a team
    of several, after backprop."""
    network = WIDE_NARROW
    update, input_grad, weight_grad = KINDS["update"], KINDS["input_grad"], KINDS["weight_grad"]
    for plan in PLANS:
        model = stepped_with_plan(monkeypatch, plan, network, 32, threads, timeline=True, isa=isa)
        events = model.timeline()
        for thread in range(threads):
            mine = events[events["thread"] == thread]
            order = list(zip(mine["kind"].tolist(), mine["layer"].tolist(), strict=True))
            backprop_done = max(i for i, event in enumerate(order) if event == (weight_grad, 1))
            for layer in range(1, network.n_layers + 1):
                kinds = [kind for kind, at in order if at == layer]
                assert kinds.count(update) == (1 if layer == 1 else 2), (plan, layer, thread)
                if layer == 1:
                    continue
                assert kinds.index(update) < kinds.index(input_grad)
                read = max(i for i, event in enumerate(order) if event == (input_grad, layer))
                written = max(i for i, event in enumerate(order) if event == (update, layer))
                below = min(i for i, event in enumerate(order) if event == (weight_grad, layer - 1))
                if threads == 1:
                    assert read < written < below, (plan, layer)
                else:
                    assert written > backprop_done, (plan, layer, thread)


def _script():
    spec = importlib.util.spec_from_file_location("cpu_timeline", ROOT / "scripts" / "cpu_timeline.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_script_interleaves_the_rounds():
    """Per case, every round runs each thread count under each plan once before the next round starts
    (A B C A B C ...): a configuration's runs are spread over the case's time, never back to back."""
    script = _script()
    cases, threads, plans = [("digits", 8), ("moons", 4)], [1, 2, 16], [8, 11]
    order = script.schedule(cases, threads, plans, 3)
    configs = sorted((t, p) for t in threads for p in plans)
    assert len(order) == len(cases) * 3 * len(configs)
    for name, _ in cases:
        runs = [(r, t, p) for r, n, _, t, p in order if n == name]
        assert [r for r, _, _ in runs] == sorted(r for r, _, _ in runs)
        for index in range(3):
            block = runs[index * len(configs):(index + 1) * len(configs)]
            assert {r for r, _, _ in block} == {index}
            assert sorted((t, p) for _, t, p in block) == configs
    # Cases follow each other: all of one case's rounds, then the next case's.
    assert [n for _, n, *_ in order] == ["digits"] * 3 * len(configs) + ["moons"] * 3 * len(configs)


def test_script_takes_the_median_over_rounds_with_its_spread():
    script = _script()
    runs = [{"step": {"median_us": v}, "blas_step": {"median_us": b}, "timeline": {"round": i},
             "load_before": (float(i), 0, 0), "load_after": (float(i) + 0.5, 0, 0), "seconds": 1.0}
            for i, (v, b) in enumerate([(500.0, 30.0), (100.0, 10.0), (300.0, 20.0), (400.0, 40.0)])]
    result = script.aggregate(runs[:3])
    assert result["step"] == {"median_us": 300.0, "min_us": 100.0, "max_us": 500.0,
                              "rounds_us": [500.0, 100.0, 300.0]}
    assert result["blas_step"]["median_us"] == 20.0 and result["blas_step"]["max_us"] == 30.0
    assert result["timeline"] == {"round": 2} and result["timeline_round"] == 2
    assert result["load_before"][0] == 0.0 and result["load_after"][0] == 2.5 and result["seconds"] == 3.0
    assert [r["step"]["median_us"] for r in result["rounds"]] == [500.0, 100.0, 300.0]
    even = script.aggregate(runs)
    assert even["step"]["median_us"] == 350.0 and even["timeline_round"] == 2  # the lower middle round


def test_script_work_inflation_per_phase():
    script = _script()

    def result(threads, **means):
        phases = {k: {"mean_us": v} for k, v in means.items()}
        busy = sum(v for k, v in means.items() if k != "pack")
        return {"threads": threads, "timeline": {"phases": phases, "busy_us_per_thread": [busy] * threads}}

    one = result(1, forward=50.0, weight_grad=30.0, input_grad=20.0, pack=40.0, update=10.0, bias_grad=1.0)
    many = result(4, forward=20.0, weight_grad=10.0, input_grad=10.0, pack=15.0, pack_weights=5.0, update=5.0,
                  bias_grad=0.25)
    ratios = script.inflation(many, one)
    assert ratios["update"] == pytest.approx(2.0)
    assert ratios["packing"] == pytest.approx(4 * 20.0 / 40.0)
    assert ratios["arithmetic"] == pytest.approx(4 * (40.0 - 15.0) / (100.0 - 40.0))
    assert ratios["bias_grad"] == pytest.approx(1.0)
    assert ratios["output_rows"] is None
    assert ratios["busy"] == pytest.approx(4 * 50.25 / 111.0)
