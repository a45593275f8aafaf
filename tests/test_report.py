"""The report builds from the committed runs, the numbers it prints are the results files' numbers, and every
comparative sentence follows the data: the report is built a second time from copies of the committed runs whose
orderings are flipped, and each sentence must flip with them."""

import json
import re
import shutil
from pathlib import Path
from statistics import median

import pandas as pd
import pytest

pytest.importorskip("typst", reason="the report is compiled with the typst package (dev install)")
pypdf = pytest.importorskip("pypdf", reason="pypdf reads the built PDF (dev install)")

from analysis import figures  # noqa: E402 - after the skips
from analysis.load import load_runs, read_table  # noqa: E402 - after the skips
from analysis.palette import device, ordered  # noqa: E402 - after the skips
from analysis.report import (  # noqa: E402 - after the skips
    ENDTOEND_SPREAD_LIMIT,
    LADDER_SPREAD_LIMIT,
    ROOT,
    build,
    committed_studies,
    report_runs,
)
from analysis.studies import COMMIT_DIGITS, load_studies  # noqa: E402 - after the skips

# The report's runs: the development machine's and the GPU host's, then the data-parallel study on two GPUs, a
# run of its own (no per-stage measurements).
*RUNS, MULTI_GPU = report_runs()
# The hand-written CUDA rungs in the order they climb (the report's "rung below").
CUDA_LADDER = ["cuda-naive", "cuda-tiled", "cuda-opt", "cuda-fused"]


def step_median(run: Path, network: str, backend: str, required: bool = True, stage: str = "step") -> float | None:
    """The stages study's median of ``stage`` (the whole step unless told), read from rows.csv block by block
    (``None`` where it was not measured and not ``required``)."""
    rows = read_table(run / "rows.csv")
    values = [float(value) for value in rows[(rows.study == "stages") & (rows.network == network)
                                             & (rows.backend == backend) & (rows.stage == stage)
                                             & (rows.status == "ok")].median_s]
    if not values and not required:
        return None
    assert len(values) == 1, (run, network, backend)
    return values[0]


def comparison(ratio: float | None) -> str:
    """How the report words a speed ratio (other / mine)."""
    if ratio is None:
        return "not measured against"
    if abs(ratio - 1) < 0.05:
        return "about as fast as"
    return "faster than" if ratio >= 1 else "slower than"


def duration(seconds: float) -> str:
    """The report's formatting of a time: three significant digits in µs, ms or s."""
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale or unit == "µs":
            value = float(f"{seconds / scale:.3g}")
            return f"{value:g} {unit}"
    raise AssertionError


def says(text: str, sentence: str, gap: int = 4000) -> bool:
    """Whether ``text`` has ``sentence``, allowing a float (a figure's labels, a caption) of up to ``gap``
    characters between two of its words, as the PDF's text order puts a page-top figure mid-sentence (the
    end-to-end figure, tick labels and caption, is about 2400 characters); also after a hyphen inside a word
    (``cuda-`` at the foot of a page, ``naive`` after the next page's figure)."""
    float_after = rf"(?:.{{0,{gap}}}?\s)??"
    words = [re.escape(word).replace(r"\-", r"\-" + float_after) for word in sentence.split()]
    return re.search(rf"\s{float_after}".join(words), text) is not None


def opening_end(text: str, opening: str, gap: int = 4000) -> int:
    """Where the one sentence of ``text`` that opens with ``opening`` goes on: its words as they are, or with
    one float of up to ``gap`` characters between two of them (a page break's figure)."""
    words = opening.split()
    if text.count(opening) == 1:
        return text.index(opening) + len(opening)
    ends = []
    for cut in range(1, len(words)):
        head, tail = " ".join(words[:cut]), " ".join(words[cut:])
        for found in re.finditer(re.escape(head + " "), text):
            after = text.find(" " + tail, found.end(), found.end() + gap)
            if after >= 0:
                ends.append(after + 1 + len(tail))
    assert len(ends) == 1, (opening, len(ends))
    return ends[0]


@pytest.fixture(scope="module")
def built():
    out = ROOT / "build" / "test-report"
    shutil.rmtree(out, ignore_errors=True)
    pdf = build([*RUNS, MULTI_GPU], out / "figures", out / "data", out / "report.pdf")
    yield out, pdf
    shutil.rmtree(out, ignore_errors=True)


def pdf_text(pdf: Path) -> str:
    text = " ".join(page.extract_text() for page in pypdf.PdfReader(pdf).pages)
    text = re.sub(r"\s+", " ", text)
    return re.sub(r"(?<=\w)- (?=\w)", "-", text)  # a name broken at its hyphen across lines


def test_report_has_every_section_and_figure(built):
    out, pdf = built
    reader = pypdf.PdfReader(pdf)
    assert len(reader.pages) >= 8
    text = pdf_text(pdf)
    for heading in ("The question and what was known", "Method", "Results", "Discussion", "Limitations",
                    "Reproducibility", "Bibliography"):
        assert heading in text
    for name in ("stages", "speedup", "threads", "batch", "width", "ladder", "training", "correctness",
                 "lineprofile"):
        assert (out / "figures" / f"{name}.pdf").stat().st_size > 1000


def test_stage_tables_print_the_measured_medians(built):
    _, pdf = built
    text = pdf_text(pdf)
    for run, network, backend in ((RUNS[0], "digits", "c-omp"), (RUNS[0], "large", "torch-cpu"),
                                  (RUNS[1], "moons-5h300", "cuda-fused"), (RUNS[1], "large", "cuda-opt")):
        expected = f"{network} {backend} "
        row = text[text.index(expected):][:200]
        assert duration(step_median(run, network, backend)) in row, (network, backend, row)


def test_cited_speedups_are_ratios_of_the_measured_medians(built):
    out, _ = built
    numbers = json.loads((out / "data" / "numbers.json").read_text())
    cpu, gpu = RUNS
    assert numbers["roles"] == {"cpu": RUNS[0].name, "gpu": RUNS[1].name}
    assert numbers["cpu"]["omp_vs_torch"]["moons-5h300"] == pytest.approx(
        step_median(cpu, "moons-5h300", "torch-cpu") / step_median(cpu, "moons-5h300", "c-omp"))
    assert numbers["gpu"]["fused_vs_graph"]["digits"] == pytest.approx(
        step_median(gpu, "digits", "torch-gpu-graph") / step_median(gpu, "digits", "cuda-fused"))
    assert numbers["gpu"]["opt_vs_torch_gpu"]["large"] == pytest.approx(
        step_median(gpu, "large", "torch-gpu") / step_median(gpu, "large", "cuda-opt"))


def round_ratios(run: Path, network: str, backend: str) -> tuple[int, list[float]]:
    """The most threads of the threads study on ``network`` and each round's ratio of one thread's step to the
    step there, read from rows.csv (older runs: one round)."""
    rows = read_table(run / "rows.csv")
    rows = rows[(rows.study == "threads") & (rows.backend == backend) & (rows.network == network)
                & (rows.stage == "step") & (rows.status == "ok")]
    rows = rows.assign(round=rows["round"] if "round" in rows else 0)
    by_round = rows.pivot_table(index="round", columns="threads", values="median_s")
    most = int(by_round.columns.max())
    return most, list((by_round[1] / by_round[most]).dropna())


def test_thread_scaling_matches_the_rows(built):
    out, _ = built
    numbers = json.loads((out / "data" / "numbers.json").read_text())
    most, ratios = round_ratios(RUNS[1], "moons-5h300", "c-omp")
    cited = numbers["gpu"]["threads"]["moons-5h300"]["c-omp"]
    assert cited["threads"] == most
    assert cited["speedup"] == pytest.approx(float(pd.Series(ratios).median()))
    assert cited["rounds"] == len(ratios)


def test_thread_rounds_are_said_with_their_range(report):
    # A speed-up from rounds is the median of the rounds' own ratios; the report gives how many and their range.
    runs, text, numbers = report
    _, moons = round_ratios(runs[1], "moons-5h300", "c-omp")
    _, mnist = round_ratios(runs[1], "mnist", "c-omp")
    cited = numbers["gpu"]["threads"]["moons-5h300"]["c-omp"]
    assert cited["speedup"] == pytest.approx(float(pd.Series(moons).median()))
    if len(moons) < 2:
        assert "rounds’ own" not in text
        return
    assert (cited["speedup_min"], cited["speedup_max"]) == pytest.approx((min(moons), max(moons)))
    assert says(text, f"Each speed-up is the median of {len(moons)} rounds’ own")
    assert says(text, f"ranged {min(moons):.3g}×–{max(moons):.3g}× on 5h300 and {min(mnist):.3g}×–"
                      f"{max(mnist):.3g}× on mnist")
    assert says(text, f"(the median of {len(moons)} rounds, {min(moons):.3g}×–{max(moons):.3g}×)")


def test_report_refuses_folders_outside_the_project(tmp_path):
    with pytest.raises(ValueError, match="inside"):
        build(RUNS, tmp_path / "figures", tmp_path / "data", tmp_path / "report.pdf")


# ---------------------------------------------------------------- sentences against the data


def largest_stage_counts(run: Path) -> tuple[int, int]:
    """(pairs where backprop is the largest compute stage, all backend-network pairs), from rows.csv."""
    rows = read_table(run / "rows.csv")
    rows = rows[(rows.study == "stages") & (rows.status == "ok") & rows.stage.isin(["forward", "backprop", "update"])]
    medians = rows.pivot_table(index=["network", "backend"], columns="stage", values="median_s").dropna()
    return int((medians.idxmax(axis=1) == "backprop").sum()), len(medians)


def checked_configurations(*runs: Path) -> int:
    """Every configuration of every run that was checked against the reference, read from rows.csv."""
    return sum(read_table(run / "rows.csv").dropna(subset=["err_max"]).key.nunique() for run in runs)


def batch_winners(run: Path) -> list[str]:
    rows = read_table(run / "rows.csv")
    rows = rows[(rows.study == "batch") & (rows.stage == "step") & (rows.status == "ok") & (rows.backend != "numpy")]
    return list(rows.loc[rows.groupby("batch").median_s.idxmin()].sort_values("batch").backend)


#: What a sweep records where an OpenBLAS runs narrower kernels than the C library (machine.narrower_blas).
NARROWER_BLAS = ("the C library runs its AVX-512 kernels, and OPENBLAS_CORETYPE=Haswell in the environment chose "
                 "narrower ones for libscipy_openblas-1.so (Haswell): c-blas and NumPy are not at their best on "
                 "this CPU")


#: What a resumed sweep records of a session on another machine than the one before (machine.another_machine).
OTHER_MACHINE = ("this session runs on another machine than the session before it (booted at "
                 "2026-11-30T23:20:00+00:00, not 2026-11-30T22:51:00+00:00): its timings compare with that "
                 "session's across machines")


#: What a sweep records of its CPU beyond the model name (machine.cpu_info), as the GPU host's Xeon gave it.
CPU_IDENTITY = {"vendor": "GenuineIntel", "family": "6", "model_number": "207", "stepping": "2",
                "caches": {"L1d": "48K", "L1i": "32K", "L2": "2048K", "L3": "307200K"}}


def flip(source: Path, target: Path) -> None:
    """A copy of a committed run whose orderings are the other way round: backprop the largest stage of every
    backend, a CPU backend fastest at the smallest batch, the GPU behind at the smallest width, c-omp ahead of
    PyTorch on the large network, the digits accuracies apart, and the CUDA rungs' steps in or out of order;
    and the kernel each timing ran the other way round: a run whose digits epochs ran cuda-fused's cluster kernel
    loses the record (as runs made before backends chose kernels), any other gains one (the cluster kernel for
    its epoch launches on digits, the grid kernel elsewhere); and a run whose sessions recorded no OpenBLAS on
    narrower kernels than the C library's records one (NARROWER_BLAS), any other loses it; and likewise a run
    whose sessions recorded no move to another machine records one in its last session (OTHER_MACHINE), and one
    whose description has no CPU identity gains one (CPU_IDENTITY), any other loses it; and a run whose sessions
    timed no configuration again at their end records one timed again."""
    shutil.copytree(source, target)
    meta = json.loads((target / "meta.json").read_text())
    for note, sentence in (("narrower_blas", NARROWER_BLAS), ("other_machine", OTHER_MACHINE)):
        had = any(session.get(note) for session in meta["sessions"])
        for session in meta["sessions"]:
            session.pop(note, None)
        if not had:
            meta["sessions"][-1][note] = sentence
    had = any(session.get("retimed") for session in meta["sessions"])
    for session in meta["sessions"]:
        session.pop("retimed", None)
    if not had:
        meta["sessions"][-1]["retimed"] = [{"key": "rows:stages/c-omp/digits/b32/t2", "first": {}}]
    cpu = meta["machine"]["cpu"]
    if "family" in cpu:
        for key in CPU_IDENTITY:
            cpu.pop(key, None)
    else:
        cpu.update(CPU_IDENTITY)
    (target / "meta.json").write_text(json.dumps(meta))
    rows = read_table(target / "rows.csv")
    ok = rows.status == "ok"
    fused = ok & (rows.backend == "cuda-fused")
    digits_epochs = fused & (rows.stage == "epoch_step") & (rows.network == "digits")
    if "kernel_choice" in rows and (rows.loc[digits_epochs, "kernel_choice"] == "cluster").any():
        rows = rows.drop(columns=["kernel_choice", "kernel_reason"])
    elif fused.any():
        rows["kernel_choice"] = ""
        rows.loc[fused, "kernel_choice"] = "grid"
        rows.loc[digits_epochs, "kernel_choice"] = "cluster"
    stages = ok & (rows.study == "stages")
    backprop = rows[stages & (rows.stage == "backprop")].set_index("key").median_s
    for stage, share in (("forward", 0.4), ("update", 0.1)):
        chosen = stages & (rows.stage == stage)
        rows.loc[chosen, "median_s"] = rows.loc[chosen, "key"].map(backprop) * share
    batch = ok & (rows.study == "batch") & (rows.stage == "step")
    smallest = batch & (rows.batch == rows.loc[batch, "batch"].min()) & (rows.backend == "c-omp")
    rows.loc[smallest, ["median_s", "q1_s", "q3_s"]] = 1e-9
    width = ok & (rows.study == "width") & (rows.stage == "step")
    narrow = width & (rows.network == rows.loc[width].sort_values("flops").network.iloc[0])
    rows.loc[narrow & (rows.device == "cuda"), "median_s"] *= 1e6
    large = stages & (rows.network == "large") & (rows.stage == "step")
    torch = rows.loc[large & (rows.backend == "torch-cpu"), "median_s"]
    if len(torch):  # a run whose torch-cpu step on the large network was skipped over budget has nothing to flip
        rows.loc[large & (rows.backend == "c-omp"), ["median_s", "q1_s", "q3_s"]] = torch.iloc[0] / 2
    # The hand-written CUDA rungs' steps put in ladder order on every network if some rung was slower than one
    # below it, else the first network's turned round (whole median-and-quartile triples move).
    times = ["median_s", "q1_s", "q3_s"]
    ladder_rows = rows[stages & (rows.stage == "step") & rows.backend.isin(CUDA_LADDER)]
    networks = {network: group.set_index("backend").loc[[b for b in CUDA_LADDER if b in set(group.backend)]]
                for network, group in ladder_rows.groupby("network")}
    networks = {network: steps for network, steps in networks.items() if len(steps) >= 2}
    in_order = all(steps.median_s.is_monotonic_decreasing for steps in networks.values())
    for network, steps in networks.items():
        climbing = steps.sort_values("median_s", ascending=in_order)
        if in_order and network != min(networks):
            continue
        for key, values in zip(steps.key, climbing[times].to_numpy(), strict=True):
            rows.loc[(rows.key == key) & (rows.stage == "step"), times] = values
    rows.to_csv(target / "rows.csv", index=False)
    # End-to-end units flagged as timed on shared cores lose their flag; a run with none flags every CPU one.
    meta = json.loads((target / "meta.json").read_text())
    busy = meta.get("busy") or []
    if any(entry["key"].startswith("endtoend:") for entry in busy):
        busy = [entry for entry in busy if not entry["key"].startswith("endtoend:")]
    elif (target / "endtoend.csv").exists():
        ends = read_table(target / "endtoend.csv")
        ends = ends[ends.backend.map(device) == "cpu"]
        busy += [{"key": f"endtoend:{task}/{backend}", "reason": "flipped"}
                 for task, backend in sorted(set(zip(ends.task, ends.backend, strict=True)))]
    meta["busy"] = busy
    (target / "meta.json").write_text(json.dumps(meta))
    training = read_table(target / "training.csv")
    training.loc[training.backend == "c-serial", "test_accuracy"] *= 0.5
    training.to_csv(target / "training.csv", index=False)
    # Each ladder's library product quiet where it varied, and varying where it was quiet.
    ladder = read_table(target / "ladder.csv")
    ceiling = ladder.impl == ladder.ceiling_impl
    noisy = ladder.iqr_s / ladder.median_s > LADDER_SPREAD_LIMIT
    ladder.loc[ceiling & noisy, "iqr_s"] = ladder.median_s * LADDER_SPREAD_LIMIT / 2
    ladder.loc[ceiling & ~noisy, "iqr_s"] = ladder.median_s * LADDER_SPREAD_LIMIT * 2
    ladder.to_csv(target / "ladder.csv", index=False)
    # Two more rounds of the threads study's scaling networks, in place of any later rounds the run had.
    repeated_rounds(read_table(target / "rows.csv")).to_csv(target / "rows.csv", index=False)
    # Two more timed runs of every end-to-end unit, the medians unchanged: within the spread limit for every
    # backend but one per task, whose second run took twice the first's.
    if (target / "endtoend.csv").exists():
        ends = repeated_endtoend(read_table(target / "endtoend.csv"), WIDE_ENDTOEND)
        ends.to_csv(target / "endtoend.csv", index=False)


#: The backend whose end-to-end runs the flipped copies spread beyond the report's limit.
WIDE_ENDTOEND = "c-serial"


def repeated_endtoend(ends: pd.DataFrame, wide: str) -> pd.DataFrame:
    """``ends`` with its first run of every unit followed by two more, in place of any it had, as the sweep
    writes them (loss and accuracy at the last epoch only): 1.1 and 0.95 times the first run's seconds, and 2
    and 0.95 times for ``wide``."""
    first = ends[ends["repeat"] == 0] if "repeat" in ends else ends.assign(repeat=0)
    ok = first[first.status == "ok"]
    runs = [first]
    for repeat, (factor, wide_factor) in enumerate(((1.1, 2.0), (0.95, 0.95)), start=1):
        again = ok.assign(repeat=repeat)
        again["seconds"] *= again.backend.map(lambda b, f=factor, w=wide_factor: w if b == wide else f)
        last = again.groupby(["task", "backend"]).epoch.transform("max")
        again.loc[again.epoch < last, ["train_loss", "test_accuracy"]] = float("nan")
        runs.append(again)
    out = pd.concat(runs, ignore_index=True)
    # Each unit's rows together, units in their first order, as the sweep writes its blocks.
    order = out.key.map({key: number for number, key in enumerate(dict.fromkeys(out.key))})
    out = out.iloc[order.argsort(kind="stable")].reset_index(drop=True)
    return out.assign(block_rows=out.groupby("key").key.transform("size"))


#: The networks the flipped copies time in rounds, and each later round's factor on one thread's step and on
#: every other thread count's.
ROUND_NETWORKS = ("moons-5h300", "mnist")
ROUND_FACTORS = ((1.5, 1.1), (0.9, 1.2))


def repeated_rounds(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with the threads study's first round on ``ROUND_NETWORKS`` followed by two more rounds, in place
    of any it had, as the sweep writes them (each configuration's block of rows under its own key, measured
    there: no reused row), their times scaled by ``ROUND_FACTORS``."""
    rows = rows.assign(round=rows["round"].fillna(0).astype(int) if "round" in rows else 0)
    rows = rows[rows["round"] == 0]
    first = rows[(rows.study == "threads") & rows.network.isin(ROUND_NETWORKS) & (rows.status == "ok")]
    times = ["median_s", "q1_s", "q3_s"]
    added = []
    for number, (one, others) in enumerate(ROUND_FACTORS, start=1):
        again = first.assign(key=first.key + f"/r{number}", round=number, reused_from=float("nan"))
        again[times] = again[times].mul(again.threads.map(lambda t, o=one, m=others: o if t == 1 else m), axis=0)
        added.append(again)
    return pd.concat([rows, *added], ignore_index=True)


def flip_ranks(source: Path, target: Path) -> None:
    """A copy of a data-parallel run whose orderings are the other way round: the most ranks faster than one
    in strong scaling, and the two all-reduce rungs' steps swapped in weak scaling."""
    shutil.copytree(source, target)
    ranks = read_table(target / "ranks.csv")
    step = (ranks.status == "ok") & (ranks.stage == "step")
    most = step & (ranks.world_size == ranks.world_size.max())
    ranks.loc[most & (ranks.scaling == "strong"), ["median_s", "q1_s", "q3_s"]] *= 0.2
    weak = most & (ranks.scaling == "weak")
    for _, group in ranks[weak].groupby(["backend", "network"]):
        after, overlapped = (group[group.rung == rung].index for rung in ("after-backprop", "overlapped"))
        times = ["median_s", "q1_s", "q3_s"]
        ranks.loc[after, times], ranks.loc[overlapped, times] = (ranks.loc[overlapped, times].to_numpy() * 1.2,
                                                                 ranks.loc[after, times].to_numpy())
    ranks.to_csv(target / "ranks.csv", index=False)


@pytest.fixture(scope="module")
def flipped():
    out = ROOT / "build" / "test-report-flipped"
    shutil.rmtree(out, ignore_errors=True)
    runs = []
    for run in RUNS:
        flip(run, out / "runs" / run.name)
        runs.append(out / "runs" / run.name)
    flip_ranks(MULTI_GPU, out / "runs" / MULTI_GPU.name)
    pdf = build([*runs, out / "runs" / MULTI_GPU.name], out / "figures", out / "data", out / "report.pdf")
    yield runs, pdf_text(pdf), json.loads((out / "data" / "numbers.json").read_text())
    shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def committed(built):
    out, pdf = built
    return RUNS, pdf_text(pdf), json.loads((out / "data" / "numbers.json").read_text())


@pytest.fixture(params=["committed", "flipped"])
def report(request):
    return request.getfixturevalue(request.param)


EVERYWHERE = "Backpropagation is the largest of the three stages for every backend on every network"


def test_largest_stage_sentence_follows_the_data(report):
    runs, text, numbers = report
    (cpu_backprop, cpu_total), (gpu_backprop, gpu_total) = map(largest_stage_counts, runs)
    if cpu_backprop == cpu_total and gpu_backprop == gpu_total:
        assert EVERYWHERE in text
    else:
        assert EVERYWHERE not in text and "everywhere" not in text
        assert f"in {gpu_backprop} of {gpu_total} backend–network pairs on the GPU host" in text
        listed = numbers["gpu"]["largest_stages"]["exception_groups"]
        assert sorted(b for g in listed for b in g["backends"]) == sorted(
            e["backend"] for e in numbers["gpu"]["largest_stages"]["exceptions"])
        for group in listed:
            backends = group["backends"]
            names = backends[0] if len(backends) == 1 else ", ".join(backends[:-1]) + " and " + backends[-1]
            assert says(text, f"{group['largest']} on {group['network']} for {names}")


def test_fastest_at_each_batch_follows_the_data(report):
    runs, text, numbers = report
    single = 0
    for run, role in zip(runs, ("cpu", "gpu"), strict=True):
        winners = batch_winners(run)
        if len(set(winners)) == 1:  # (a figure may float into the sentence's first words in the PDF's text)
            single += 1
            assert says(text, f"On {numbers[role]['machine']['label']} {winners[0]} is the fastest at every batch "
                              "size measured")
        else:
            stretches, start = [], 0
            sizes = sorted(read_table(run / "rows.csv").query("study == 'batch'").batch.unique())
            for index in range(1, len(winners) + 1):
                if index == len(winners) or winners[index] != winners[start]:
                    first, last = sizes[start], sizes[index - 1]
                    stretches.append(f"{winners[start]} at {first}" + (f"–{last}" if last != first else ""))
                    start = index
            assert says(text, f"fastest backend changes with the batch: {', '.join(stretches)}.")
    assert len(re.findall(r"is the fastest(?:\s.{0,2000}?)?? at every batch size measured", text)) == single
    assert "is fastest at small batches" not in text


def test_an_openblas_on_narrower_kernels_is_said_of_the_runs_that_recorded_one(report):
    runs, text, _ = report
    recorded = [run.name for run in runs if any(session.get("narrower_blas") for session in
                                                json.loads((run / "meta.json").read_text())["sessions"])]
    for run in recorded:
        assert says(text, f"in {run} {NARROWER_BLAS};")
    assert says(text, "NumPy rows of that run are slower than OpenBLAS can be there") == (len(recorded) == 1)
    assert says(text, "NumPy rows of those runs are slower") == (len(recorded) > 1)
    assert ("Libraries:" in text) == bool(recorded)


def test_the_cpu_is_named_with_its_identity_where_the_run_recorded_it(report):
    # The machines table's two columns; a run swept before the record has its model name alone.
    runs, text, _ = report
    cpus = [json.loads((run / "meta.json").read_text())["machine"]["cpu"] for run in runs[:2]]
    for cpu in cpus:
        if "family" in cpu:
            l2, l3 = (int(cpu["caches"][level].rstrip("K")) // 1024 for level in ("L2", "L3"))
            assert says(text, f"(family {cpu['family']}, model {cpu['model_number']}, stepping {cpu['stepping']}; "
                              f"L2 {l2} MiB, L3 {l3} MiB)")
    assert text.count("(family ") == sum("family" in cpu for cpu in cpus)


def test_configurations_timed_again_are_said(report):
    runs, text, _ = report
    again = {run.name: sum(len(session.get("retimed") or []) for session in
                           json.loads((run / "meta.json").read_text())["sessions"]) for run in runs}
    again = {name: count for name, count in again.items() if count}
    for name, count in again.items():
        assert says(text, f"{name} timed {count} configuration{'s' if count > 1 else ''} again at the end of a "
                          "session")
    assert ("Timed again:" in text) == bool(again)


def test_a_run_resumed_on_another_machine_is_said(report):
    runs, text, _ = report
    moved = {run.name: sum(bool(session.get("other_machine")) for session in
                           json.loads((run / "meta.json").read_text())["sessions"]) for run in runs}
    moved = {name: count for name, count in moved.items() if count}
    for name, count in moved.items():
        assert says(text, f"{name} ran its sessions on {count + 1} machines")
    assert says(text, "sessions of that run compare across machines") == (len(moved) == 1)
    assert ("Machines:" in text) == bool(moved)


def test_width_crossover_follows_the_data(report):
    runs, text, _ = report
    rows = read_table(runs[1] / "rows.csv")
    rows = rows[(rows.study == "width") & (rows.stage == "step") & (rows.status == "ok") & (rows.backend != "numpy")]
    rows["width"] = rows.network.str.split("-").str[0].astype(int)
    best = rows.groupby(["width", rows.device == "cuda"]).median_s.min().unstack()
    leads = list(best[True] < best[False])
    if all(leads):
        assert f"at every width measured ({best.index.min()} to {best.index.max()})" in text
    else:
        start = next(w for i, w in enumerate(best.index) if all(leads[i:]))
        assert f"from width {start} on" in text and "at every width measured" not in text


def test_large_network_comparison_follows_the_data(report):
    runs, text, _ = report
    words = []
    for run in runs:
        omp, torch = step_median(run, "large", "c-omp"), step_median(run, "large", "torch-cpu", required=False)
        words.append(comparison(None if torch is None else torch / omp))
    plain = re.sub(r"\d+(\.\d+)?× ", "", text)
    assert re.search(rf"On the large network OpenMP C is {words[0]} PyTorch on the development machine (\([^)]*\) )?"
                     rf"and {words[1]} it on the GPU host", plain), words


def ladder_rate(run: Path, impl: str) -> float:
    """A CPU implementation's GFLOP/s in the run's product ladder, read straight from ladder.csv."""
    ladder = read_table(run / "ladder.csv")
    return float(ladder[(ladder.device == "cpu") & (ladder.impl == impl) & (ladder.status == "ok")].gflops.iloc[0])


def test_what_limits_the_large_network_follows_the_data(report):
    """The product's rate is said to bound the large network only where, on both machines, the ladder's packed C
    product and OpenMP C's large step are on the same side of PyTorch; otherwise both ratios are given."""
    runs, text, _ = report
    products = [ladder_rate(run, "c-v3") / ladder_rate(run, "torch-cpu") for run in runs]
    steps = [step_median(run, "large", "torch-cpu") / step_median(run, "large", "c-omp") for run in runs]
    plain = re.sub(r"\d+(\.\d+)?× ", "", text)
    assert says(plain, f"the packed C product of the ladder is {comparison(products[0])} PyTorch’s on the development "
                       f"machine and {comparison(products[1])} it on the GPU host’s Xeon")
    if all((p > 1) == (s > 1) for p, s in zip(products, steps, strict=True)):
        assert says(plain, "and the product’s rate bounds the large network:")
        assert says(plain, "on the same side of PyTorch as OpenMP C’s large step on each machine")
    else:
        assert "the product’s rate bounds the large network" not in plain
        assert says(plain, f"while OpenMP C’s large step is {comparison(steps[0])} PyTorch’s on the first and "
                           f"{comparison(steps[1])} it on the second")


def test_cuda_rung_order_follows_the_data(report):
    runs, text, numbers = report
    rows = read_table(runs[1] / "rows.csv")
    networks = sorted(rows[(rows.study == "stages") & rows.backend.isin(CUDA_LADDER)].network.unique())
    slower = []
    for network in networks:
        steps = {b: step_median(runs[1], network, b, required=False) for b in CUDA_LADDER}
        rungs = [b for b in CUDA_LADDER if steps[b] is not None]
        slower += [(network, upper, steps[upper], lower, steps[lower]) for i, upper in enumerate(rungs)
                   for lower in rungs[:i] if steps[upper] > steps[lower]]
    if not slower:
        assert says(text, "each hand-written CUDA rung steps at least as fast as every rung below it")
        assert "do not climb the same ladder" not in text
    else:
        assert "do not climb the same ladder on every network" in text
        assert "at least as fast as every rung below it" not in text
        for network, upper, upper_s, lower, lower_s in slower:
            assert says(text, f"on {network} {upper} ({duration(upper_s)}) is slower than {lower} "
                              f"({duration(lower_s)}"), (network, upper, lower)
    assert len(numbers["gpu"]["rung_order"]["slower"]) == len(slower)
    # where no fused step explains an inversion: a tie within the quartiles is called one, anything else unexplained
    unexplained = [s for s in numbers["gpu"]["rung_order"]["slower"] if s["fused_s"] is None]
    for overlap, phrase in ((True, "this run does not tell the two apart"),
                            (False, "no measurement of this run says why")):
        assert (phrase in text) == any(s["overlap"] == overlap for s in unexplained), phrase


SHARED = "timed while its cores were shared"


def test_a_flagged_cpu_time_is_said_where_an_end_to_end_ratio_uses_it(report):
    runs, text, numbers = report
    ends = numbers["gpu"]["endtoend"]
    head = next(ends[t] for t in ("digits-target", "moons-tanh", "moons-original")
                if t in ends and ends[t].get("gpu_vs_best_cpu") is not None)
    digits = ends.get("digits-target")
    used = [head["best_cpu"]] + ([digits["best_cpu"]] if digits and "gpu_vs_best_cpu" in digits else [])
    meta = json.loads((runs[1] / "meta.json").read_text())
    keys = {entry["key"] for entry in meta.get("busy") or []}
    for task, entry in ends.items():
        if "best_cpu" in entry:
            assert entry["best_cpu"]["flagged"] == (f"endtoend:{task}/{entry['best_cpu']['backend']}" in keys)
    if any(cpu["flagged"] for cpu in used):
        assert text.count(SHARED) == sum(cpu["flagged"] for cpu in used)
        if digits["best_cpu"]["flagged"]:
            cpu = digits["best_cpu"]
            assert says(text, f"({cpu['backend']}, {duration(cpu['seconds'])}, {SHARED}")
    else:
        assert SHARED not in text


SLOWED = "timed on shared cores and may be faster than measured"


def test_a_slower_cpu_backend_timed_on_shared_cores_is_said_beside_the_fastest(report):
    # On quiet cores a flagged backend that lost might have won: the ratio to the fastest CPU says so.
    runs, text, numbers = report
    meta = json.loads((runs[1] / "meta.json").read_text())
    keys = {entry["key"] for entry in meta.get("busy") or []}
    digits = numbers["gpu"]["endtoend"]["digits-target"]
    rows = read_table(runs[1] / "endtoend.csv")
    cpu = set(rows[(rows.task == "digits-target") & (rows.device == "cpu") & (rows.status == "ok")].backend) - {"numpy"}
    best = digits["best_cpu"]
    expected = ordered([b for b in cpu if f"endtoend:digits-target/{b}" in keys and b != best["backend"]])
    assert digits["flagged_slower_cpu"] == expected  # in the report's order of backends
    if expected:
        names = expected[0] if len(expected) == 1 else ", ".join(expected[:-1]) + " and " + expected[-1]
        # the fastest's own flag, if it has one, comes first
        own = rf", {SHARED}[^;]*" if best["flagged"] else ""
        sentence = (rf"\({re.escape(best['backend'])}, {re.escape(duration(best['seconds']))}{own}; "
                    rf"{re.escape(names)} {'was' if len(expected) == 1 else 'were'} {SLOWED}\)")
        assert re.search(sentence, text), sentence
    else:
        assert SLOWED not in text


SPREAD = "own time varied by"


def test_a_library_product_that_varied_is_said_beside_its_ladder(report):
    # Every percentage of a ladder is measured against its library product: where that product's own
    # interquartile range is wide, the report says so beside the percentage.
    runs, text, numbers = report
    noisy_pairs = 0
    for run, role in zip(runs, ("cpu", "gpu"), strict=True):
        ladder = read_table(run / "ladder.csv")
        ceilings = ladder[(ladder.status == "ok") & (ladder.impl == ladder.ceiling_impl)].set_index("device")
        for ladder_device, row in ceilings.iterrows():
            noisy = bool(row.iqr_s / row.median_s > LADDER_SPREAD_LIMIT)
            assert numbers[role]["ladder_ceiling_noisy"][ladder_device] == noisy, (run.name, ladder_device)
            noisy_pairs += noisy
    assert text.count(SPREAD) == noisy_pairs


def test_the_timed_runs_behind_each_end_to_end_time_are_said(report):
    # How many runs each end-to-end median stands on, and the backends whose runs disagreed beyond the limit.
    runs, text, numbers = report
    for run, role in zip(runs, ("cpu", "gpu"), strict=True):
        ends = read_table(run / "endtoend.csv")
        label = numbers[role]["machine"]["label"]
        if "repeat" not in ends:
            assert says(text, f"On {label} each time is a single run.")
            continue
        timed = ends[ends.status == "ok"].sort_values("epoch").groupby(["task", "backend", "repeat"]).tail(1)
        seconds = timed.groupby(["task", "backend"]).seconds
        spread = (seconds.max() - seconds.min()) / seconds.median()
        wide = spread[spread > ENDTOEND_SPREAD_LIMIT]
        assert says(text, f"On {label} each time is the median of {timed.repeat.nunique()} runs")
        sentence = text[text.index(f"On {label} each time is the median"):].split(". ")[0]
        named = set(re.findall(r"(\S+) on (\S+) \(\d", sentence))
        assert named == {(backend, task) for task, backend in wide.index}, sentence
        # none beyond the limit: the widest spread is given instead
        assert ("a backend's runs spanned at most" in sentence.replace("’", "'")) == wide.empty, sentence


def test_a_thread_scaling_from_a_time_on_shared_cores_says_so(report):
    # The abstract's 1-to-16-thread speed-up of c-omp on 5h300 divides two times; either may be flagged.
    runs, text, numbers = report
    rows = read_table(runs[1] / "rows.csv")
    steps = rows[(rows.study == "threads") & (rows.stage == "step") & (rows.status == "ok")
                 & (rows.backend == "c-omp") & (rows.network == "moons-5h300")]
    keys = {entry["key"] for entry in json.loads((runs[1] / "meta.json").read_text()).get("busy") or []}
    flagged = False
    for threads in (1, steps.threads.max()):
        # over rounds, the round or two the median is taken from
        by_time = steps[steps.threads == threads].sort_values("median_s", kind="stable")
        middle = by_time.iloc[sorted({(len(by_time) - 1) // 2, len(by_time) // 2})]
        # a row at the stages study's thread count reuses that unit's measurement, and its flag
        flagged |= any(f"rows:{key}" in keys or f"rows:{source}" in keys
                       for key, source in zip(middle.key, middle.reused_from, strict=True))
    assert numbers["gpu"]["threads"]["moons-5h300"]["c-omp"]["flagged"] == flagged
    sentence = text[text.index("Scaling OpenMP from 1 to"):].split(" on 16 cores")[0]
    assert ("taken while the cores were shared" in sentence) == flagged, sentence


def test_the_abstracts_openmp_against_pytorch_says_when_a_time_was_shared(report):
    _, text, numbers = report
    sentence = text[text.index("one OpenMP C step on"):].split("Scaling OpenMP")[0]
    on_cpu, on_gpu = sentence.split(", and on ")
    for part, role in ((on_cpu, "cpu"), (on_gpu, "gpu")):
        entry = numbers[role]["baselines"]["moons-5h300"]
        shared = any(entry[b]["matched"]["flagged"] for b in ("c-omp", "torch-cpu"))
        assert ("a time it compares was taken while the cores were shared" in part) == shared, (role, part)


def test_end_to_end_times_taken_on_shared_cores_are_marked_in_their_table(report):
    runs, text, _ = report
    flagged = 0
    for run in runs:
        keys = {entry["key"] for entry in json.loads((run / "meta.json").read_text()).get("busy") or []}
        ends = read_table(run / "endtoend.csv")
        ok = ends[ends.status == "ok"]
        reached = set(ok[ok.test_accuracy >= ok.target_accuracy].task)  # digits-target's cell: the time to target
        shown = {(t, b) for t, b in zip(ok.task, ok.backend, strict=True) if t != "digits-target" or t in reached}
        flagged += sum(f"endtoend:{task}/{backend}" in keys for task, backend in shown)
    table = text[text.index("to target (epoch)"):text.index("Table 6:")]
    assert table.count("*\ufe0e") == flagged


def test_a_flagged_baseline_is_marked_where_the_report_compares_it(committed):
    _, text, numbers = committed
    for role in ("cpu", "gpu"):
        for network, entry in numbers[role]["baselines"].items():
            torch, omp = entry.get("torch-cpu", {}), entry.get("c-omp", {})
            best = torch.get("best")
            if best is None or best["tried"] < 2:
                continue
            shared = any(x and x["flagged"] for x in (best, torch.get("matched"), omp.get("best")))
            end = opening_end(text, f"On {network} ({numbers[role]['machine']['label']}) PyTorch is at its best")
            sentence = text[end:][:600]  # what follows the words the sentence opens with
            assert ("taken while the cores were shared" in sentence.split(". On ")[0]) == shared, (role, network)


def test_counts_and_ranges_follow_the_data(report):
    runs, text, numbers = report
    total = checked_configurations(*runs)
    assert f"Over both runs {total} of {total} checked configurations passed" in text
    accuracy = numbers["gpu"]["test_accuracy"]
    if round(accuracy["min"] * 100) == round(accuracy["max"] * 100):
        assert "reach the same test accuracy" in text
    else:
        assert "reach a test accuracy between" in text
    assert not re.search(r"between (\d+) % and \1 %", text)
    margin = numbers["gpu"]["correctness"]["tolerance"] / numbers["gpu"]["correctness"]["max_error"]
    assert "orders of magnitude" not in text or margin >= 100


def test_words_the_data_cannot_support(committed):
    _, text, _ = committed
    abstract = text[text.index("Abstract"):text.index("1 The question")]
    assert "tiled" not in abstract  # cuda-opt is register-blocked; the tiled rung is another backend
    assert "trains more than an order of magnitude faster" not in text
    runs, numbers = committed[0], committed[2]
    measured_e2e = any((run / "endtoend.csv").exists() for run in runs)
    assert ("None of these runs measured end-to-end training" in text) == (not measured_e2e)
    assert numbers["gpu"]["endtoend"] or not measured_e2e
    for lost in ("4.47× the matrix", "× PyTorch reaches", "configurations the worst"):
        assert lost not in text, lost
    assert not re.search(r"0\.0000\d", text)  # small numbers in scientific notation


def test_committed_counts_include_every_run_configuration(committed):
    runs, _, numbers = committed
    assert numbers["gpu"]["correctness"]["configurations"] == checked_configurations(runs[1])
    assert numbers["correctness_all"]["configurations"] == checked_configurations(*runs)


NEWER = ROOT / "tests" / "fixtures" / "results" / "gpu-fixture"


@pytest.fixture(scope="module")
def newer():
    """The report of the development run beside a run of the GPU host's newer shape (end-to-end training,
    data-parallel ranks, all-reduce, new backend names)."""
    out = ROOT / "build" / "test-report-newer"
    shutil.rmtree(out, ignore_errors=True)
    pdf = build([RUNS[0], NEWER], out / "figures", out / "data", out / "report.pdf")
    yield pdf_text(pdf), json.loads((out / "data" / "numbers.json").read_text())
    shutil.rmtree(out, ignore_errors=True)


def test_endtoend_sentences_follow_the_data(newer):
    text, numbers = newer
    rows = read_table(NEWER / "endtoend.csv")
    done = rows[rows.status == "ok"]
    last = done.sort_values("epoch").groupby(["task", "backend"]).tail(1).set_index(["task", "backend"])
    original = last.loc["moons-original"]
    assert (original.test_accuracy < 0.75).all()  # two classes: chance 0.5, learned from 0.75 up
    assert "does not learn on any backend" in text and "None of these runs measured end-to-end" not in text
    assert "The same widths with tanh (learning rate 0.1) learn on every backend" in text
    digits = done[done.task == "digits-target"]
    reached = digits[digits.test_accuracy >= digits.target_accuracy].sort_values("epoch").groupby("backend").head(1)
    seconds = reached.set_index("backend").seconds
    gpu = seconds[seconds.index.str.startswith(("cuda", "torch-gpu"))]
    cpu = seconds[~seconds.index.str.startswith(("cuda", "torch-gpu"))]
    ratio = cpu.min() / gpu.min()
    assert numbers["gpu"]["endtoend"]["digits-target"]["gpu_vs_best_cpu"] == pytest.approx(ratio)
    assert f"the fastest GPU backend ({gpu.idxmin()}" in text and f"the fastest CPU backend ({cpu.idxmin()}" in text
    for backend in ("cuda-cublas", "torch-gpu-compile", "c-omp"):
        assert backend in text
    rows = read_table(NEWER / "rows.csv").query("study == 'stages' and stage == 'step' and nonfinite == 1")
    assert len(rows) == 1
    for row in rows.itertuples():
        assert says(text, f"the loss became non-finite while timing {row.backend} on {row.network}")


def test_several_processes_section_follows_the_data(newer):
    text, _ = newer
    has_ranks = (RUNS[0] / "ranks.csv").exists() and (read_table(RUNS[0] / "ranks.csv").status == "ok").any()
    assert (f"{RUNS[0].name} (AMD EPYC (2 cores)) has no data-parallel measurements" in text) == (not has_ranks)
    scaling = read_table(NEWER / "ranks.csv").query("stage == 'step'")
    assert f"on up to {scaling.world_size.max()} ranks" in text


def percent(share: float) -> str:
    """The report's formatting of a percentage: two significant digits."""
    return f"{float(f'{share * 100:.2g}'):g} %"


def test_multi_gpu_sentences_follow_the_data(report):
    runs, text, numbers = report
    ranks = read_table(runs[0].parent / MULTI_GPU.name / "ranks.csv").query("status == 'ok' and stage == 'step'")
    most = ranks.world_size.max()
    assert most >= 2 and numbers["ranks_runs"][MULTI_GPU.name]["gpus"] == most
    plain = re.sub(r"\d+(\.\d+)?× ", "", text)
    for (backend, network), group in ranks[ranks.scaling == "weak"].groupby(["backend", "network"]):
        step = group.set_index(["rung", "world_size"]).median_s
        after, overlapped = (step[rung, 1] / step[rung, most] for rung in ("after-backprop", "overlapped"))
        per_gpu = int(group.batch_per_rank.iloc[0])
        assert says(text, f"Weak scaling of {network} with {backend}, {per_gpu} rows per GPU, keeps {percent(after)} "
                          f"of the ideal efficiency at {most} GPUs with the all-reduce after backprop and "
                          f"{percent(overlapped)} with it overlapped"), (backend, network)
        gain = step["after-backprop", most] / step["overlapped", most]
        assert says(plain, f"{backend}, {per_gpu} rows per GPU, keeps {percent(after)} of the ideal efficiency at "
                           f"{most} GPUs with the all-reduce after backprop and {percent(overlapped)} with it "
                           f"overlapped (the overlapped step {comparison(gain)} the other)")
    strong = ranks[ranks.scaling == "strong"]
    best = strong.groupby(["backend", "network", "world_size"]).median_s.min().unstack()
    gains = best[1] / best[most]
    assert ("no configuration gains from more GPUs" in text) == bool((gains < 1).all())
    assert (f"the speed-up of {most} GPUs over one" in text) == bool((gains >= 1).any())
    assert says(text, f"Data-parallel training on GPUs was measured on at most {most} GPUs of one host")
    abstract = text[text.index("Abstract"):text.index("1 The question")]
    assert f"On {most} GPUs, data-parallel weak scaling of" in abstract
    assert ("while a fixed small batch split over the GPUs runs slower than on one GPU" in abstract) == bool(
        (gains < 1).all())


def sig_times(ratio: float) -> str:
    """The report's formatting of a ratio: two significant digits below 1, three above, and a times sign."""
    digits = 2 if ratio < 1 else 3
    return f"{float(f'{ratio:.{digits}g}'):g}×"


def strong_gains(ranks: pd.DataFrame) -> pd.Series:
    """Per (backend, network, round) of a data-parallel run's strong scaling: the most GPUs' speed-up over one,
    each at its faster rung in that round."""
    steps = ranks[(ranks.status == "ok") & (ranks.stage == "step") & (ranks.scaling == "strong")]
    steps = steps.assign(round=steps["round"].fillna(1).astype(int) if "round" in steps else 1)
    best = steps.groupby(["backend", "network", "round", "world_size"]).median_s.min().unstack()
    return best[1] / best[steps.world_size.max()]


def test_a_second_take_of_the_gpu_ranks_is_set_beside_them(report):
    """The second take among the studies: its speed-ups printed (the median of its rounds), and the
    configurations whose launches in either run fall on either side of 1 named (the flipped run gains
    everywhere)."""
    runs, text, numbers = report
    take = next(folder for folder in committed_studies() if (folder / "ranks.csv").exists())
    label = str(take.relative_to(ROOT))
    assert numbers["studies"]["ranks_take"]["folder"] == label
    assert says(text, f"on a fresh machine of the same kind ({label}, on the code of commit")
    taken = read_table(take / "ranks.csv").query("status == 'ok'")
    rungs = sorted(set(taken.rung))
    assert (f"; one all-reduce rung, {rungs[0]}) measured" in text) == (len(rungs) == 1)
    mine = strong_gains(read_table(runs[0].parent / MULTI_GPU.name / "ranks.csv"))
    again = strong_gains(read_table(take / "ranks.csv"))
    medians = again.groupby(level=["backend", "network"]).median()
    for (backend, network), gain in medians.items():
        assert re.search(rf"{re.escape(sig_times(gain))} \({backend}, {network}[;)]", text), (backend, network)
    both = pd.concat([mine, again])
    split = [f"{backend} on {network}" for (backend, network), gains in both.groupby(level=["backend", "network"])
             if (backend, network) in medians.index and gains.min() < 1 <= gains.max()]
    found = re.search(r"disagree on whether more GPUs pay for (.*?): for these one launch", text, re.S)
    assert (found is not None) == bool(split)
    if split:
        listed = " ".join(found.group(1).split())
        assert sorted(re.split(r", | and ", listed)) == sorted(split)


def test_cpu_ranks_launched_in_rounds_give_the_rounds_range():
    """The development run with its ranks study replaced by one launched in three rounds: each efficiency at the
    largest world size is the median of the rounds', with their range."""
    rounds = ROOT / "results" / "dev-2core-ranks-rounds"
    out = ROOT / "build" / "test-report-rank-rounds"  # Typst reads only inside the project
    shutil.rmtree(out, ignore_errors=True)
    dev = out / "runs" / RUNS[0].name
    shutil.copytree(RUNS[0], dev)
    for name in ("ranks.csv", "allreduce.csv"):
        shutil.copy(rounds / name, dev / name)
    pdf = build([dev, *RUNS[1:], MULTI_GPU], out / "figures", out / "data", out / "report.pdf")
    text = pdf_text(pdf)
    numbers = json.loads((out / "data" / "numbers.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    assert RUNS[0].name not in launched_once(numbers)
    assert_launched_once_said(text, numbers)
    steps = read_table(rounds / "ranks.csv").query("status == 'ok' and stage == 'step'")
    most = steps.world_size.max()
    for (backend, scaling, rung), group in steps.groupby(["backend", "scaling", "rung"]):
        by_round = group.set_index(["round", "world_size"]).median_s
        ratio = by_round.xs(1, level="world_size") / by_round.xs(most, level="world_size")
        if scaling == "strong":
            ratio = ratio / most
        assert says(text, f"{percent(ratio.median())} ({backend} mnist {scaling} gloo {rung}; the median of "
                          f"{len(ratio)} rounds, from {percent(ratio.min())} to {percent(ratio.max())})"), (
            backend, scaling, rung)


def launched_once(numbers: dict) -> dict[str, str]:
    """The report's runs whose data-parallel configurations were each launched once, with their machines."""
    return {run_id: run["machine"] for run_id, run in numbers["ranks_runs"].items()
            if run["efficiency"] and not run["efficiency_rounds"]}


def assert_launched_once_said(text: str, numbers: dict) -> None:
    once = list(launched_once(numbers).values())
    if not once:
        assert "Data-parallel launches:" not in text
        return
    listed = once[0] if len(once) == 1 else ", ".join(once[:-1]) + " and " + once[-1]
    # The machines exactly, not merely within reach of the sentence's words (says() allows a float between them).
    found = re.findall(r"Data-parallel launches: on (.+?) each data-parallel configuration was launched once", text)
    assert found == [listed], found


def test_runs_launched_once_are_named_in_the_limitations(committed):
    _, text, numbers = committed
    assert_launched_once_said(text, numbers)


def test_multi_gpu_table_prints_the_measured_steps(report):
    runs, text, _ = report
    ranks = read_table(runs[0].parent / MULTI_GPU.name / "ranks.csv").query("status == 'ok' and stage == 'step'")
    most = ranks.world_size.max()
    step = ranks.set_index(["backend", "network", "scaling", "rung", "world_size"]).median_s
    for row in ranks[ranks.world_size == most].itertuples():
        one = step[row.backend, row.network, row.scaling, row.rung, 1]
        assert (f"{row.backend} {row.network} ({row.global_batch}) {row.scaling} {row.rung} {duration(one)} "
                f"{duration(row.median_s)}") in text, row


def recorded_epoch_kernels(run: Path) -> dict[str, str]:
    """cuda-fused's kernel for each network's epoch launch in the stages study, where the run records it."""
    rows = read_table(run / "rows.csv")
    if "kernel_choice" not in rows:
        return {}
    epoch = rows[(rows.study == "stages") & (rows.backend == "cuda-fused") & (rows.stage == "epoch_step")]
    return dict(zip(epoch.network, epoch.kernel_choice, strict=True))


def test_the_kernel_of_an_epoch_launch_is_said_where_the_run_records_it(committed, flipped):
    # One of the two ran digits' epochs on the cluster kernel (the committed GPU run or its flipped copy).
    assert {recorded_epoch_kernels(runs[1]).get("digits") == "cluster"
            for runs, _, _ in (committed, flipped)} == {True, False}
    for runs, text, numbers in (committed, flipped):
        kernels = recorded_epoch_kernels(runs[1])
        assert {n: k for n, k in numbers["gpu"]["epoch_kernel"].items() if k is not None} == kernels
        if kernels.get("digits") == "cluster":
            assert says(text, "on digits (there on its second kernel, which runs the whole step in one cluster "
                              "of thread blocks, keeps the weights in their shared memory from step to step")
            labels = [t.get_text() for ax in figures.plot_stages(load_runs(*runs)).axes for t in ax.texts]
            assert any(label.endswith(", cluster)") for label in labels), labels
        else:
            assert not says(text, "(there on its second kernel")


def test_an_epoch_per_launch_follows_the_data(committed):
    runs, text, numbers = committed
    epoch = step_median(runs[1], "moons-5h300", "cuda-fused", stage="epoch_step")
    graph = step_median(runs[1], "moons-5h300", "torch-gpu-graph")
    assert numbers["gpu"]["fused_epoch_vs_graph"]["moons-5h300"] == pytest.approx(graph / epoch)
    assert says(text, f"the fused kernel takes {duration(epoch)} per step on 5h300")
    assert says(text, f"That is {graph / epoch:.3g}× faster than the graph")


def test_host_probes_are_said_from_their_folders(committed):
    """The threads section's probes paragraph: the ceiling and exchange numbers as their JSON holds them (median
    of the rounds' medians), and the exchange's share of the report's own 16-thread 5h300 step."""
    _, text, numbers = committed
    ceiling = next(r for r in json.loads((ROOT / "results/h200-ceiling/take3/ceiling.json").read_text())["results"]
                   if r["case"] == "moons-5h300:32" and r["copies"] == 16)
    assert says(text, f"together ran {ceiling['ceiling']['median']:.3g}× the throughput of one")
    assert says(text, f"reached {ceiling['omp_speedup']['median']:.3g}× in the same rounds")
    probe = json.loads((ROOT / "results/h200-exchange/take2/exchange.json").read_text())
    exchange = next(r for r in probe["results"] if r["threads"] == 16)
    shared = median(r["shared"]["stretch"]["median"] for r in exchange["rounds"])
    private = median(r["private"]["stretch"]["median"] for r in exchange["rounds"])
    assert says(text, f"took {duration(shared)}")
    assert says(text, f"against {duration(private)} when each thread's data is its own".replace("'", "’"))
    step = numbers["gpu"]["threads"]["moons-5h300"]["c-omp"]["step_s"]  # test_thread_scaling_matches_the_rows
    extra = 2 * probe["meta"]["layers"] * (shared - private)  # each layer's stretch forward and back
    assert says(text, f"what the threads share costs it {duration(extra)} more than private data would, "
                      f"{percent(extra / step)} of the {duration(step)} that OpenMP C’s 16-thread step took in the "
                      "threads study above")


#: The core-pace probe's cores that the flipped copy never lets run slow.
QUIET_CORES = (0, 1, 2, 3, 12)


@pytest.fixture(scope="module")
def flipped_probes():
    """The report with copies of the cited probes whose comparisons are turned round: c-omp above the copies'
    ceiling, the shared stretch shorter than the private one, and cores 0-3 and 12 of the core-pace probe never
    slow (each of their measurements set to its process's fastest)."""
    out = ROOT / "build" / "test-report-probes"
    shutil.rmtree(out, ignore_errors=True)
    ceiling, exchange, pace = out / "ceiling", out / "exchange", out / "pace"
    shutil.copytree(ROOT / "results/h200-ceiling/take3", ceiling)
    shutil.copytree(ROOT / "results/h200-exchange/take2", exchange)
    shutil.copytree(ROOT / "results/h200-core-pace", pace)
    report = json.loads((pace / "pace.json").read_text())
    fastest = {}
    for cell in report["steps"]:
        fastest[cell["process"]] = min(fastest.get(cell["process"], cell["median_us"]), cell["median_us"])
    for cell in report["steps"]:
        if cell["core"] in QUIET_CORES:
            cell["median_us"] = fastest[cell["process"]]
    (pace / "pace.json").write_text(json.dumps(report))
    report = json.loads((ceiling / "ceiling.json").read_text())
    for row in report["results"]:
        row["omp_speedup"] = {key: value * 10 for key, value in row["omp_speedup"].items()}
    (ceiling / "ceiling.json").write_text(json.dumps(report))
    report = json.loads((exchange / "exchange.json").read_text())
    for result in report["results"]:
        for row in result["rounds"]:
            row["shared"], row["private"] = row["private"], row["shared"]
    (exchange / "exchange.json").write_text(json.dumps(report))
    pdf = build([*RUNS, MULTI_GPU], out / "figures", out / "data", out / "report.pdf",
                studies=[ceiling, exchange, pace])
    yield pdf_text(pdf)
    shutil.rmtree(out, ignore_errors=True)


def step_parts_report(name: str, events_of) -> str:
    """The report's text with a copy of the step-parts probe whose events around a step (each statistic)
    are ``events_of(events, device)`` of the probe's own."""
    out = ROOT / "build" / f"test-report-{name}"
    shutil.rmtree(out, ignore_errors=True)
    parts = out / "step-parts"
    shutil.copytree(ROOT / "results/h200-step-parts", parts)
    report = json.loads((parts / "step_parts.json").read_text())
    for result in report["results"]:
        events, device = result["parts"]["events"], result["parts"]["device"]["median"]
        result["parts"]["events"] = {key: value if key == "n" else events_of(value, device)
                                     for key, value in events.items()}
    (parts / "step_parts.json").write_text(json.dumps(report))
    pdf = build([*RUNS, MULTI_GPU], out / "figures", out / "data", out / "report.pdf", studies=[parts])
    text = pdf_text(pdf)
    shutil.rmtree(out, ignore_errors=True)
    return text


@pytest.fixture(scope="module")
def slow_step_parts():
    """The report with a probe whose digits step between events took ten times as long: longer than the run's
    own step."""
    return step_parts_report("slow-step-parts", lambda events, device: events * 10)


@pytest.fixture(scope="module")
def quick_step_parts():
    """The report with a probe whose host share of a step between events (events less device-only) is a tenth
    of the probe's own: shorter than the run's own step, and than the call back to back."""
    return step_parts_report("quick-step-parts", lambda events, device: device + (events - device) / 10)


def test_the_runs_own_step_is_set_against_the_probes_where_it_took_longer(committed, slow_step_parts,
                                                                         quick_step_parts):
    _, text, numbers = committed
    probe = json.loads((ROOT / "results/h200-step-parts/step_parts.json").read_text())
    digits = next(r for r in probe["results"] if r["case"] == "digits:32")
    events, device = digits["parts"]["events"]["median"], digits["parts"]["device"]["median"]
    step = numbers["gpu"]["step_s"]["digits"]["cuda-fused"]
    sentence = f"The sweep’s own step of cuda-fused on digits took {duration(step)}"
    if step > events:
        assert says(text, f"{sentence}, {duration(step - events)} more than the probe’s: a step this short depends "
                          f"on the host that launches it ({duration(events - device)} of the probe’s before")
    else:
        assert not says(text, sentence)
    assert "takes one cuda-fused step on digits apart" in " ".join(slow_step_parts.split())
    assert not says(slow_step_parts, sentence)
    quick = device + (events - device) / 10
    assert step > quick
    assert says(quick_step_parts, f"{sentence}, {duration(step - quick)} more than the probe’s")


def test_the_host_time_beyond_the_back_to_back_call_is_named_where_there_is_some(committed, quick_step_parts):
    _, text, _ = committed
    probe = json.loads((ROOT / "results/h200-step-parts/step_parts.json").read_text())
    digits = next(r for r in probe["results"] if r["case"] == "digits:32")
    before_launch = digits["parts"]["events"]["median"] - digits["parts"]["device"]["median"]
    beyond = before_launch - digits["host_us"]["train_step"] * 1e-6
    sentence = "is beyond what the call takes back to back"
    if beyond > 1e-6:
        assert says(text, f"Of the time before the launch, {duration(beyond)} {sentence}")
    else:
        assert not says(text, sentence)
    # A tenth of the host share is less than the call itself: nothing beyond it to name.
    assert before_launch / 10 < digits["host_us"]["train_step"] * 1e-6
    assert not says(quick_step_parts, sentence)


def test_host_probe_sentences_follow_their_data(committed, flipped_probes):
    _, text, _ = committed
    assert says(text, "the cores leave room that the threads do not use")
    assert says(text, "what the threads share costs it")
    assert not says(flipped_probes, "the cores leave room")
    assert says(flipped_probes, "in the same rounds (build/test-report-probes/ceiling), as much as the copies")
    assert not says(flipped_probes, "what the threads share costs it")
    assert says(flipped_probes, "and sharing the activations cost them nothing over private data")


def test_host_probes_are_left_out_without_a_threads_study_to_compare(newer):
    """The newer-shaped GPU run has no 16-thread c-omp step on 5h300: the probes have nothing in the report to be
    set against, and their paragraph is left out (the studies are still in numbers.json)."""
    text, numbers = newer
    assert numbers["gpu"]["threads"].get("moons-5h300", {}).get("c-omp") is None
    assert set(numbers["studies"]) == {"ceiling", "exchange", "step_parts", "core_pace", "ranks_take"}
    assert "Two probes" not in text


def test_the_pace_paragraph_reads_its_probe(committed, flipped_probes):
    _, text, _ = committed
    pace = load_studies([ROOT / "results/h200-core-pace"], root=ROOT)["core_pace"]
    series, per_core = pace["series"], pace["slow_per_core"]
    assert pace["slow_cores"] == pace["cores"] and pace["slow_every_pass"] == 1
    assert says(text, f"found {pace['slow_cells']} of their {pace['cells']} measurements of 100 steps at "
                      f"{pace['slow_ratio']['min']:.3g}×–{pace['slow_ratio']['max']:.3g}× their process’s median: "
                      f"on every core ({per_core['min']} to {per_core['max']} of each core’s {pace['cells_per_core']})")
    assert says(text, "and 1 core slow in every pass of one process")
    assert says(text, f"{series['slow_on_one']} of them on one core alone and {series['slow_on_all']} on all "
                      f"{series['cores']} at once (the first {duration(series['leading_on_all_s'])}, when")
    assert says(text, f"no core’s slow stretch lasted over {duration(series['longest_s'])}")
    # The copy whose cores 0-3 and 12 never run slow: the other 11 still do, and no core in every pass.
    assert says(flipped_probes, f"on {pace['cores'] - len(QUIET_CORES)} of the {pace['cores']} cores")
    assert says(flipped_probes, "no core slow in every pass of a process")
    assert not says(flipped_probes, "their process’s median: on every core", gap=0)


def test_the_fused_step_is_taken_apart_from_its_probe(committed, flipped_probes):
    """The GPU section's probe paragraph: each part of the digits step as the probe's JSON holds it; without the
    probe among the studies, no paragraph."""
    _, text, numbers = committed
    probe = json.loads((ROOT / "results/h200-step-parts/step_parts.json").read_text())
    digits = next(r for r in probe["results"] if r["case"] == "digits:32")
    part = {name: stats["median"] for name, stats in digits["parts"].items()}
    host = {name: us * 1e-6 for name, us in digits["host_us"].items()}
    repeats = probe["meta"]["repeats"]
    commit = probe["meta"]["git"]["commit"][:COMMIT_DIGITS]
    assert says(text, f"(results/h200-step-parts), on the code of commit {commit} where the "
                      f"run’s is {numbers['gpu']['machine']['commit']}, takes one cuda-fused step")
    assert says(text, f"between events: {duration(part['events'])} in all (medians of {repeats} rounds)")
    assert says(text, f"Of that, {duration(part['events'] - part['device'])} passes before the launch reaches the GPU")
    assert says(text, f"the call with its checks takes {duration(host['train_step'])}")
    assert says(text, f"calls the driver, takes {duration(host['launch alone'])}")
    assert says(text, f"and {duration(part['device'])} on the GPU: {duration(part['start'])} to start and end")
    assert says(text, f"the kernel’s own {duration(part['kernel'])} by its first block’s clock (its "
                      f"{digits['blocks']} blocks)")
    assert says(text, f"{duration(host['launch alone'] + part['start'])} together")
    assert "takes one cuda-fused step on digits apart" not in flipped_probes


def test_backends_timed_in_a_later_session_of_a_run_are_named(committed):
    _, text, numbers = committed
    later = [(backend, session["minutes_after_first"]) for role in ("cpu", "gpu")
             for session in numbers[role]["later_sessions"] for backend in session["backends"]]
    for backend, minutes in later:
        assert says(text, f"{backend} ({minutes} min after the run"), backend
    assert ("timed in a later session of the run" in text) == bool(later)


def test_later_sessions_are_read_from_the_rows_times_and_the_sessions_spans():
    from analysis.report import later_sessions

    meta = {"sessions": [{"started_at": "2026-01-01T10:00:00+00:00", "finished_at": "2026-01-01T10:20:00+00:00"},
                         {"started_at": "2026-01-01T10:30:00+00:00", "finished_at": "2026-01-01T10:40:00+00:00"}]}
    rows = pd.DataFrame({"study": "stages", "status": ["ok", "ok", "ok", "skipped", "ok"],
                         "backend": ["c-omp", "c-serial", "c-blas", "c-blas", "c-omp"],
                         "finished_at": ["2026-01-01T10:05:00+00:00", "2026-01-01T10:06:00+00:00",
                                         "2026-01-01T10:35:00+00:00", "2026-01-01T10:07:00+00:00",
                                         "2026-01-01T10:08:00+00:00"]})
    assert later_sessions(rows, meta) == [{"started_at": "2026-01-01T10:30:00+00:00", "minutes_after_first": 30,
                                           "backends": ["c-blas"]}]
    # a backend timed in both sessions belongs to neither; one session alone says nothing
    both = rows.assign(backend=["c-omp", "c-serial", "c-omp", "c-blas", "c-omp"])
    assert later_sessions(both, meta) == []
    assert later_sessions(rows, {"sessions": meta["sessions"][:1]}) == []
