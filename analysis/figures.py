"""Every figure of the study, drawn from :class:`analysis.load.Results` with the shared palette.

Each ``plot_*`` function returns a :class:`matplotlib.figure.Figure` with one row of panels per run (the
development machine's and the GPU host's runs side by side in one figure); a study absent from the runs
gives a figure that says so, so :func:`draw_all` always writes the same set of files. :func:`save` writes
PNG and PDF (PDF without a creation date, so rebuilt figures are byte-identical).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from analysis import summary
from analysis.load import Results
from analysis.palette import (
    STAGE_COLORS,
    STAGE_ORDER,
    backend_color,
    backend_marker,
    ladder_color,
    ladder_order,
    ordered,
)

#: Every figure is drawn at the width it is printed (the report's text width, 16.8 cm), so the sizes below are
#: the printed sizes: no text under 7 pt.
TEXT_WIDTH = 6.5  # inches
ROW_HEIGHT = 2.3  # inches per row of panels
plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7.5,
                     "xtick.labelsize": 7.5, "ytick.labelsize": 7.5, "figure.titlesize": 8.5,
                     "figure.constrained_layout.h_pad": 0.03, "figure.constrained_layout.w_pad": 0.03})
SMALL = 7  # the smallest text on any figure (labels on bars), in points


def _grid(n_rows: int, n_cols: int, height: float = ROW_HEIGHT, **options: object) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(max(n_rows, 1), max(n_cols, 1), squeeze=False, layout="constrained",
                             figsize=(TEXT_WIDTH, height * max(n_rows, 1)), **options)
    return fig, axes


def _run_rows(runs: list[tuple[str, str]], n_cols: int, height: float = ROW_HEIGHT,
              **options: object) -> tuple[Figure, list[np.ndarray]]:
    """One row of ``n_cols`` panels per run, the machine named once above its row."""
    fig = plt.figure(layout="constrained", figsize=(TEXT_WIDTH, height * len(runs) + 0.25))
    rows = []
    for subfig, (_, machine) in zip(np.atleast_1d(fig.subfigures(len(runs), 1)), runs, strict=True):
        subfig.suptitle(machine, fontsize=8.5, fontweight="bold")
        rows.append(subfig.subplots(1, n_cols, squeeze=False, **options)[0])
    return fig, rows


def _plain_log_axis(axis: Axis) -> None:
    """Log-scaled axis labelled 1, 2, 4 ... rather than powers."""
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _empty(title: str, why: str) -> Figure:
    fig, axes = _grid(1, 1, height=1.0)
    axes[0, 0].text(0.5, 0.5, why, ha="center", va="center", wrap=True, transform=axes[0, 0].transAxes)
    axes[0, 0].set_axis_off()
    fig.suptitle(title)
    return fig


def _runs(table: pd.DataFrame) -> list[tuple[str, str]]:
    """``(run_id, machine)`` pairs in first-seen order."""
    return list(dict.fromkeys(zip(table["run_id"], table["machine"], strict=True)))


def _legend(fig: Figure, axes: object, columns: int = 5) -> None:
    """One legend for the whole figure, below the panels, each label once, in at most ``columns`` columns and
    fewer where long labels would run past the figure's edges; the figure grows by the legend's height, so the
    panels keep theirs."""
    handles: dict[str, object] = {}
    for ax in np.asarray(axes, dtype=object).flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    renderer = fig.canvas.get_renderer()
    for ncols in range(min(columns, len(handles)), 0, -1):
        legend = fig.legend(list(handles.values()), list(handles), loc="outside lower center", frameon=False,
                            ncols=ncols)
        extent = legend.get_window_extent(renderer)
        if ncols == 1 or extent.width <= fig.bbox.width:
            fig.set_figheight(fig.get_figheight() + extent.height / fig.dpi)
            return
        legend.remove()


def _quartile_bars(median: pd.Series, q1: pd.Series, q3: pd.Series) -> np.ndarray:
    """Asymmetric error bars (2 × n) from quartiles, for ``errorbar(yerr=...)``; NaN where not recorded."""
    return np.vstack([(median - q1).clip(lower=0).to_numpy(float), (q3 - median).clip(lower=0).to_numpy(float)])


def plot_stages(results: Results) -> Figure:
    """How each backend's separately timed stages share its work, one panel per run and network (two panels
    to a row), with the whole training step's median time at the end of each bar (and in parentheses, for a
    backend that runs many steps per launch, its time per step of an epoch in one launch and the kernel that ran
    it, where the run records one). ``transfer`` (GPU backends) is stacked last."""
    table = summary.stage_table(results)
    if table.empty:
        return _empty("Time per stage", "no stages study in these runs")
    panels = list(dict.fromkeys(zip(table.run_id, table.machine, table.network, table.batch, strict=True)))
    per_row = 2
    layout = []  # (row, col) of each panel: each run starts a new row
    row = col = 0
    for index, (run_id, *_) in enumerate(panels):
        if index and (run_id != panels[index - 1][0] or col == per_row):
            row, col = row + 1, 0
        layout.append((row, col))
        col += 1
    heights = [max(len(table[(table.run_id == p[0]) & (table.network == p[2])]) for p, at in
                   zip(panels, layout, strict=True) if at[0] == r) for r in range(row + 1)]
    fig, axes = plt.subplots(row + 1, per_row, squeeze=False, layout="constrained",
                             figsize=(TEXT_WIDTH, sum(0.15 * h + 0.7 for h in heights) + 0.3),
                             gridspec_kw={"height_ratios": [0.15 * h + 0.7 for h in heights]})
    used = set(layout)
    for ax_row, ax_col in np.ndindex(axes.shape):
        if (ax_row, ax_col) not in used:
            axes[ax_row, ax_col].set_axis_off()
    for (run_id, machine, network, batch), (ax_row, ax_col) in zip(panels, layout, strict=True):
        ax = axes[ax_row, ax_col]
        data = table[(table.run_id == run_id) & (table.network == network) & (table.batch == batch)]
        data = data.set_index("backend").loc[ordered(data.backend)]
        total = data[[f"{s}_s" for s in STAGE_ORDER]].sum(axis=1, min_count=1).to_numpy()
        left = np.zeros(len(data))
        for stage in (*summary.COMPUTE_STAGES, "transfer"):
            values = data[f"{stage}_s"].fillna(0).to_numpy() / total * 100
            if values.any():
                ax.barh(data.index, values, left=left, color=STAGE_COLORS[stage], label=stage, edgecolor="white",
                        linewidth=0.5)
                left += values
        for y, (seconds, epoch, kernel) in enumerate(zip(data["step_s"], data["epoch_step_s"], data["epoch_kernel"],
                                                         strict=True)):
            # a backend that runs many steps per launch: also its step inside an epoch's launch, and the kernel
            # that ran it where the run records one
            ran_on = f", {kernel}" if isinstance(kernel, str) else ""
            label = duration(seconds) + (f" ({duration(epoch)}{ran_on})" if np.isfinite(epoch) else "")
            ax.text(102, y, label, va="center", fontsize=SMALL)
        ax.set_xlim(0, 210 if table.epoch_kernel.notna().any() else 170 if np.isfinite(table.epoch_step_s).any()
                    else 135)
        ax.set_xticks([0, 25, 50, 75, 100])
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=SMALL)
        ax.set_title(f"{network}, batch {batch}\n{_short_machine(machine)}")
    _legend(fig, axes)
    return fig


def _short_machine(machine: str) -> str:
    """The GPU where there is one, else the CPU: enough to tell two runs apart in a panel title."""
    return machine.split(" + ")[-1]


def duration(seconds: float) -> str:
    """``0.000123`` -> ``123 µs``; ``0.0456`` -> ``45.6 ms``; three significant digits."""
    if not np.isfinite(seconds):
        return ""
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale or unit == "µs":
            return f"{seconds / scale:.3g} {unit}"
    return ""


def plot_speedup(results: Results) -> Figure:
    """Speed-up of every backend's whole step over PyTorch on the same kind of device (``torch-cpu`` for CPU
    backends, ``torch-gpu`` for GPU backends), per network, log scale."""
    table = summary.stage_table(results)
    table = table[np.isfinite(table["speedup"].astype(float))] if not table.empty else table
    if table.empty:
        return _empty("Speed-up over PyTorch", "no backend with a PyTorch baseline in the same run")
    runs = _runs(table)
    fig, rows = _run_rows(runs, 1, height=2.0)
    for (run_id, _), (ax,) in zip(runs, rows, strict=True):
        data = table[table.run_id == run_id]
        networks = list(dict.fromkeys(data.network))
        backends = ordered(data.backend)
        width = 0.8 / len(backends)
        for index, backend in enumerate(backends):
            found = data[data.backend == backend].set_index("network").reindex(networks)
            ax.bar(np.arange(len(networks)) + index * width, found["speedup"], width, color=backend_color(backend),
                   label=backend)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
        ax.set_xticks(np.arange(len(networks)) + 0.4 - width / 2, networks)
        ax.set_ylabel("step speed-up over PyTorch\n(same device, ×)")
    _legend(fig, rows)
    return fig


def plot_baselines(results: Results) -> Figure:
    """The CPU baselines at the matched thread count and at their best: median step time relative to ``c-omp``
    at the matched count (log scale), with quartile error bars and each bar's thread count on top."""
    table = summary.thread_baselines(results)
    if table.empty:
        return _empty("Matched and best thread counts", "no c-omp or torch-cpu rows in these runs")
    runs = _runs(table)
    fig, rows = _run_rows(runs, 1, height=1.8)
    for (run_id, _), (ax,) in zip(runs, rows, strict=True):
        data = table[table.run_id == run_id]
        networks = list(dict.fromkeys(data.network))
        unit = data[(data.backend == "c-omp") & (data.which == "matched")].set_index("network").step_s
        unit = unit.reindex(networks).fillna(data.groupby("network").step_s.min().reindex(networks))
        bars = [(b, w) for b in ordered(data.backend) for w in ("matched", "best")]
        width = 0.8 / len(bars)
        for index, (backend, which) in enumerate(bars):
            found = data[(data.backend == backend) & (data.which == which)].set_index("network").reindex(networks)
            x = np.arange(len(networks)) + index * width
            value = found.step_s / unit
            ax.bar(x, value, width, color=backend_color(backend), hatch="" if which == "matched" else "///",
                   edgecolor="white", label=f"{backend}, {which} threads", error_kw={"lw": 0.8},
                   yerr=_quartile_bars(value, found.step_q1_s / unit, found.step_q3_s / unit))
            for xi, threads, top in zip(x, found.threads, found.step_q3_s / unit, strict=True):
                if np.isfinite(threads):
                    ax.text(xi, top * 1.08, f"{threads:.0f}", ha="center", va="bottom", fontsize=SMALL)
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
        ax.margins(y=0.25)
        ax.set_xticks(np.arange(len(networks)) + 0.4 - width / 2, networks)
        ax.set_ylabel("step time relative to\nc-omp, matched threads")
    _legend(fig, rows, columns=2)
    return fig


def short_gpu_name(backend: str) -> str:
    """``cuda-fused`` -> ``fused``, ``torch-gpu-graph`` -> ``graph``, ``torch-gpu`` -> ``torch``: bar labels."""
    return "torch" if backend == "torch-gpu" else backend.removeprefix("torch-gpu-").removeprefix("cuda-")


STAGE_ABBREVIATIONS = {"forward": "fwd", "backprop": "bprop", "update": "upd", "step": "step"}


def plot_stage_speedup(results: Results) -> Figure:
    """The study's question in one figure: per network and stage, the speed-up over serial C of OpenMP C and
    of the fastest GPU backend at that stage (log scale; the backend named on its bar)."""
    table = summary.stage_speedups(results)
    if table.empty:
        return _empty("Speed-up per stage", "no stages study in these runs")
    runs = _runs(table)
    n_cols = max(table[table.run_id == r].network.nunique() for r, _ in runs)
    fig, rows = _run_rows(runs, n_cols, height=1.9, sharey=True)
    colours = {"serial C": backend_color("c-serial"), "OpenMP C": backend_color("c-omp"),
               "best GPU": backend_color("cuda-opt")}
    stages = (*summary.COMPUTE_STAGES, "step")
    for (run_id, _), axes in zip(runs, rows, strict=True):
        data = table[table.run_id == run_id]
        networks = list(dict.fromkeys(data.network))
        for col, ax in enumerate(axes):
            if col >= len(networks):
                ax.set_axis_off()
                continue
            mine = data[data.network == networks[col]]
            if not np.isfinite(mine.speedup).any():  # e.g. serial C over the timing budget on the large network
                ax.text(0.5, 0.5, "no serial C step\nin this run", ha="center", va="center", fontsize=SMALL,
                        transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_title(f"{networks[col]}, b{mine.batch.iloc[0]}")
                continue
            levels = [level for level in summary.LEVELS if level in set(mine.level)]
            width = 0.8 / len(levels)
            for index, level in enumerate(levels):
                found = mine[mine.level == level].set_index("stage").reindex(stages)
                x = np.arange(len(stages)) + index * width
                ax.bar(x, found.speedup, width, color=colours[level], label=level)
                if level == "best GPU":
                    for xi, backend, value in zip(x, found.backend, found.speedup, strict=True):
                        if isinstance(backend, str):
                            ax.text(xi, value * 1.1, short_gpu_name(backend),
                                    rotation=90, ha="center", va="bottom", fontsize=SMALL)
            ax.axhline(1.0, color="black", linewidth=0.6)
            ax.set_yscale("log")
            _plain_log_axis(ax.yaxis)
            ax.set_ylim(min(0.5, data.speedup.min() / 1.5), data.speedup.max() * 50)  # room for the names
            ax.set_xticks(np.arange(len(stages)) + 0.4 - width / 2, [STAGE_ABBREVIATIONS[s] for s in stages])
            ax.set_title(f"{networks[col]}, b{mine.batch.iloc[0]}")
        axes[0].set_ylabel("speed-up over serial C (×)")
    _legend(fig, rows)
    return fig


def plot_threads(results: Results) -> Figure:
    """Speed-up over 1 thread against thread count (quartile error bars), with the ideal line and, on the
    original study's network, its points (179.3 s on 1 thread, 40.1 s on 16: 4.47x)."""
    table = summary.thread_scaling(results)
    if table.empty:
        return _empty("Thread scaling", "no threads study in these runs")
    runs = _runs(table)
    panels = {run_id: list(dict.fromkeys(zip(table[table.run_id == run_id].network,
                                              table[table.run_id == run_id].batch, strict=True)))
              for run_id, _ in runs}
    n_cols = max(len(p) for p in panels.values())
    fig, rows = _run_rows(runs, n_cols, height=2.1)
    authors = summary.AUTHORS_THREADS
    for (run_id, _), axes in zip(runs, rows, strict=True):
        for col, ax in enumerate(axes):
            if col >= len(panels[run_id]):
                ax.set_axis_off()
                continue
            network, batch = panels[run_id][col]
            data = table[(table.run_id == run_id) & (table.network == network) & (table.batch == batch)]
            ours = network == summary.AUTHORS_NETWORK
            most = max(int(data.threads.max()), int(authors.threads.max()) if ours else 1)
            ax.plot([1, most], [1, most], ":", color="grey", label="ideal")
            if ours:
                ax.plot(authors.threads, authors.speedup, "k*--", markersize=8, label="original study (2× Xeon)")
            for backend in ordered(data.backend):
                found = data[data.backend == backend]
                one = found.step_s * found.speedup  # the 1-thread median
                ax.errorbar(found.threads, found.speedup, yerr=_quartile_bars(
                    found.speedup, one / found.step_q3_s, one / found.step_q1_s), marker=backend_marker(backend),
                    color=backend_color(backend), label=backend, markersize=4, capsize=2, lw=1)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            _plain_log_axis(ax.xaxis)
            _plain_log_axis(ax.yaxis)
            ax.set_xlabel("threads")
            ax.set_ylabel("speed-up over 1 thread (×)")
            ax.set_title(f"{network}, batch {batch}")
    _legend(fig, rows)
    return fig


def plot_batch(results: Results) -> Figure:
    """Samples per second over batch size with quartile error bars (left) and throughput relative to batch 1
    (right, with the original study's batch 1 and 512 runs when the study ran on its network)."""
    table = summary.batch_effect(results)
    if table.empty:
        return _empty("Batch size", "no batch study in these runs")
    runs = _runs(table)
    fig, rows = _run_rows(runs, 2, height=2.1)
    authors = summary.AUTHORS_BATCH
    for (run_id, _), axes in zip(runs, rows, strict=True):
        data = table[table.run_id == run_id]
        for backend in ordered(data.backend):
            found = data[data.backend == backend]
            style = {"marker": backend_marker(backend), "color": backend_color(backend), "label": backend,
                     "markersize": 4, "lw": 1}
            rate = found.batch / found.step_s
            axes[0].errorbar(found.batch, found.samples_per_s, yerr=_quartile_bars(
                rate, found.batch / found.step_q3_s, found.batch / found.step_q1_s), capsize=2, **style)
            axes[1].plot(found.batch, found.relative_throughput, **style)
        if data.network.iloc[0] == summary.AUTHORS_NETWORK:
            axes[1].plot(authors.batch, authors.relative_throughput, "k*--", markersize=8,
                         label="original study (16 threads)")
        axes[0].set_ylabel("samples per second")
        axes[1].set_ylabel("throughput vs batch 1 (×)")
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            _plain_log_axis(ax.xaxis)
            ax.set_xlabel("batch size")
            ax.set_title(data.network.iloc[0])
    _legend(fig, rows)
    return fig


def plot_width(results: Results) -> Figure:
    """Step GFLOP/s over layer width (square layers), with the matrix-product ceilings measured in the same
    run as dashed lines: the launch-bound to compute-bound crossover, roofline-style."""
    table = summary.width_table(results)
    if table.empty:
        return _empty("Throughput over width", "no width study in these runs")
    runs = _runs(table)
    fig, axes = _grid(1, len(runs), height=2.6)
    for col, (run_id, machine) in enumerate(runs):
        ax = axes[0, col]
        data = table[table.run_id == run_id]
        for backend in ordered(data.backend):
            found = data[data.backend == backend]
            ax.plot(found.width, found.gflops, marker=backend_marker(backend), color=backend_color(backend),
                    label=backend, markersize=4, lw=1)
        ceilings = data.dropna(subset=["ceiling_gflops"]).drop_duplicates("ceiling_impl")
        for ceiling in ceilings.itertuples():
            ax.axhline(ceiling.ceiling_gflops, linestyle="--", color=backend_color(ceiling.ceiling_impl),
                       label=f"{ceiling.ceiling_impl} product")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        _plain_log_axis(ax.xaxis)
        ax.set_xlabel("layer width")
        ax.set_ylabel("GFLOP/s of one step")
        ax.set_title(f"{data.network.iloc[0].count('-')} layers, batch {data.batch.iloc[0]}\n{machine}")
    _legend(fig, axes)
    return fig


def plot_ladder(results: Results) -> Figure:
    """Each matrix-product implementation as % of the library ceiling measured in the same run."""
    table = summary.ladder_table(results)
    table = table[table.status == "ok"] if not table.empty else table
    if table.empty:
        return _empty("Matrix-product ladder", "no ladder measured in these runs")
    panels = list(dict.fromkeys(zip(table.run_id, table.machine, table.device, strict=True)))
    per_row = 2
    fig, axes = _grid((len(panels) + per_row - 1) // per_row, per_row, height=2.3)
    for ax in axes.flat[len(panels):]:
        ax.set_axis_off()
    for ax, (run_id, machine, device) in zip(axes.flat, panels, strict=False):
        data = table[(table.run_id == run_id) & (table.device == device)].set_index("impl")
        data = data.loc[ladder_order(data.index)]
        bars = ax.bar(data.index, data.pct_of_ceiling, color=[ladder_color(i) for i in data.index])
        ax.bar_label(bars, labels=[f"{g:,.0f}" if g >= 100 else f"{g:.2g}" for g in data.gflops], fontsize=SMALL,
                     padding=1)
        ax.margins(y=0.15)
        ax.axhline(100, color="black", linewidth=0.8)
        ax.set_ylabel(f"% of {data.ceiling_impl.iloc[0]}")
        part = _short_machine(machine) if device == "gpu" else machine.split(" + ")[0]
        ax.set_title(f"{device.upper()}, n = {int(data.n.iloc[0])} · {part}\n"
                     "GFLOP/s on the bars")
        ax.tick_params(axis="x", rotation=40)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    return fig


def plot_training(results: Results) -> Figure:
    """Training loss and test accuracy per epoch, every backend overlaid (curves should coincide)."""
    rows = results.training
    rows = rows[rows.status == "ok"] if not rows.empty else rows
    if rows.empty:
        return _empty("Training curves", "no training curves in these runs")
    runs = _runs(rows)
    fig, panel_rows = _run_rows(runs, 2, height=1.9)
    for (run_id, _), axes in zip(runs, panel_rows, strict=True):
        data = rows[rows.run_id == run_id]
        for backend in ordered(data.backend):
            curve = data[data.backend == backend]
            style = {"marker": backend_marker(backend), "color": backend_color(backend), "label": backend,
                     "alpha": 0.8, "markersize": 3, "lw": 1}
            axes[0].plot(curve.epoch, curve.train_loss, **style)
            axes[1].plot(curve.epoch, curve.test_accuracy, **style)
        dataset, network = data.dataset.iloc[0], data.network.iloc[0]
        title = dataset if dataset == network else f"{dataset} ({network})"
        axes[0].set(xlabel="epoch", ylabel="mean training loss", yscale="log", title=title)
        axes[1].set(xlabel="epoch", ylabel="test accuracy", title=title)
    _legend(fig, panel_rows)
    return fig


def plot_correctness(results: Results) -> Figure:
    """Worst relative error against the float64 reference, backend × quantity, per run (log10 colour)."""
    table = summary.correctness_table(results)
    if table.empty:
        return _empty("Correctness", "no correctness checks in these runs")
    runs = _runs(table)
    fig, axes = _grid(1, len(runs), height=0.2 * table.backend.nunique() + 1.3)
    columns = list(summary.ERROR_COLUMNS)
    for col, (run_id, machine) in enumerate(runs):
        mine = table[table.run_id == run_id]
        data = mine.groupby("backend")[columns].max()
        data = data.loc[ordered(data.index)].rename(columns=lambda c: c.removeprefix("err_").replace("grad_", "d"))
        # Exact agreement (the reference against itself) has no logarithm: coloured at the floor, labelled.
        values = data.astype(float)
        logs = np.log10(values.clip(lower=1e-12))
        labels = np.where(values.to_numpy() == 0, "0", logs.map("{:.1f}".format).to_numpy())
        ax = axes[0, col]
        sns.heatmap(logs, ax=ax, annot=labels, fmt="", cmap="viridis", vmin=-12, vmax=-4, cbar=col == len(runs) - 1,
                    annot_kws={"fontsize": SMALL}, cbar_kws={"label": "log10 worst relative error"})
        ax.set_title(f"{_short_machine(machine)}\n{int(mine.checked.sum())} configurations, tolerance "
                     f"{mine.tolerance.iloc[0]:.0e}")
        ax.set_ylabel("")
        ax.tick_params(axis="x", rotation=40, labelsize=SMALL)
        ax.tick_params(axis="y", rotation=0, labelsize=SMALL)
    return fig


def plot_lineprofile(results: Results) -> Figure:
    """Where a small network's profiled step goes, as disjoint shares of the step: the interface's input
    checks (pure Python), the rest of ``prepare``, forward, backprop and update (or the fused
    ``train_step`` where a backend never calls the stages), and the rest of the driver."""
    table = summary.lineprofile_table(results)
    if table.empty:
        return _empty("Python overhead", "no line profiles in these runs")
    runs = _runs(table)
    fig, axes = _grid(1, len(runs), height=0.2 * table.backend.nunique() + 1.3)
    parts = {"checks_share": ("input checks", "#fdae6b"),
             "prepare_share": ("prepare (rest)", STAGE_COLORS["transfer"]),
             "forward_share": ("forward", STAGE_COLORS["forward"]),
             "backprop_share": ("backprop", STAGE_COLORS["backprop"]),
             "update_share": ("update", STAGE_COLORS["update"]),
             "fused_share": ("fused train_step", "#636363"),
             "rest_share": ("driver (rest)", "#f0f0f0")}
    for col, (run_id, machine) in enumerate(runs):
        data = table[table.run_id == run_id].set_index("backend")
        data = data.loc[ordered(data.index)]
        ax = axes[0, col]
        left = np.zeros(len(data))
        for column, (label, color) in parts.items():
            values = data[column].astype(float).fillna(0).clip(lower=0).to_numpy() * 100
            ax.barh(data.index, values, left=left, color=color, label=label, edgecolor="white")
            left += values
        for y, seconds in enumerate(data.plain_step_s):
            ax.text(max(left.max(), 100) + 2, y, duration(seconds), va="center", fontsize=SMALL)
        ax.set_xlim(0, max(left.max(), 100) * 1.35)
        ax.set_xticks([0, 50, 100])
        ax.invert_yaxis()
        ax.set_xlabel("share of the profiled step (%)")
        ax.set_title(f"{data.network.iloc[0]}, b{data.batch.iloc[0]} · {_short_machine(machine)}\n"
                     "unprofiled step at right")
    _legend(fig, axes, columns=4)
    return fig


def plot_endtoend(results: Results) -> Figure:
    """End-to-end training per task: test accuracy over cumulative training seconds, every backend, one
    panel per task and run (log time): how long each backend takes to get where, and whether it gets there.
    The curve is the run evaluated after every epoch (``repeat`` 0); the others are timed, not evaluated, until
    their last epoch."""
    frame = results.endtoend
    if not frame.empty:
        frame = frame[(frame.status == "ok") & frame.epoch.notna() & (frame.repeat == 0)]
    if frame.empty:
        return _empty("End-to-end training", "no end-to-end training in these runs")
    runs = _runs(frame)
    tasks = list(dict.fromkeys(frame.task))
    fig, rows = _run_rows(runs, len(tasks), height=2.0, sharey=True)
    for (run_id, _), axes in zip(runs, rows, strict=True):
        for ax, task in zip(axes, tasks, strict=True):
            data = frame[(frame.run_id == run_id) & (frame.task == task)]
            for backend in ordered(data.backend):
                curve = data[data.backend == backend].sort_values("epoch")
                ax.plot(curve.seconds, curve.test_accuracy, color=backend_color(backend), label=backend, lw=1)
            if len(data) and data.target_accuracy.notna().any():
                ax.axhline(data.target_accuracy.max(), color="grey", ls=":", lw=0.8)
            ax.set_xscale("log")
            # Decades only: a panel under a decade wide labelled its minor ticks on top of each other.
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("training seconds")
            ax.set_title(task)
        axes[0].set_ylabel("test accuracy")
    _legend(fig, rows)
    return fig


def plot_ranks(results: Results) -> Figure:
    """Several processes: scaling efficiency over ranks with the ideal line (strong and weak), the stage
    shares of a step at each world size (all-reduce among them), and all-reduce bus bandwidth over message
    size (the ceiling), one row per run that has such data."""
    scaling, shares, allreduce = (summary.rank_scaling(results), summary.rank_stage_shares(results),
                                  summary.allreduce_table(results))
    runs = list(dict.fromkeys(_runs(scaling) + _runs(shares) + _runs(allreduce)))
    if not runs:
        return _empty("Several processes", "no data-parallel runs in these results")
    fig, rows = _run_rows(runs, 3, height=1.9)
    for (run_id, _), (eff, share, bus) in zip(runs, rows, strict=True):
        data = scaling[scaling.run_id == run_id]
        groups = data.groupby(["backend", "network", "scaling", "pg_backend", "rung"])
        for (backend, network, mode, pg, rung), curve in groups:
            eff.plot(curve.world_size, curve.efficiency, marker="o" if mode == "strong" else "s",
                     ls="-" if rung == "overlapped" else "--", color=backend_color(backend), markersize=4, lw=1,
                     label=f"{backend} {network} {mode} {pg} {rung}")
        eff.axhline(1.0, color="grey", ls=":", label="ideal")
        eff.set(xlabel="ranks", ylabel="scaling efficiency", title="efficiency (1 = ideal)", ylim=(0, 1.1))
        eff.set_xscale("log", base=2)
        _plain_log_axis(eff.xaxis)
        mine = shares[shares.run_id == run_id]
        if len(mine):
            # The configuration reaching the most ranks, weak scaling and the all-reduce after backprop first.
            reach = mine.groupby(["backend", "network", "scaling", "pg_backend", "rung"]).world_size.transform("max")
            widest = mine[reach == reach.max()]
            pick = widest.sort_values(["scaling", "rung"], key=lambda c: c.map(
                {"weak": 0, "strong": 1, "after-backprop": 0, "overlapped": 1})).iloc[0]
            first = mine[(mine.backend == pick.backend) & (mine.network == pick.network)
                         & (mine.scaling == pick.scaling) & (mine.rung == pick.rung)
                         & (mine.pg_backend == pick.pg_backend)]
            pivot = first.pivot_table(index="world_size", columns="stage", values="share")
            bottom = np.zeros(len(pivot))
            for stage in summary.RANK_STAGES:
                if stage in pivot:
                    share.bar(pivot.index.astype(str), pivot[stage] * 100, bottom=bottom, color=STAGE_COLORS[stage],
                              label=stage)
                    bottom += pivot[stage].to_numpy() * 100
            share.set(xlabel="ranks", ylabel="share of the step (%)",
                      title=f"{pick.backend} on {pick.network}, {pick.pg_backend}\n{pick.scaling}, {pick.rung}")
        else:
            share.set_axis_off()
        ceiling = allreduce[allreduce.run_id == run_id]
        for (pg, world), curve in ceiling.groupby(["pg_backend", "world_size"]):
            bus.plot(curve.bytes, curve.busbw_gbps, marker=".", lw=1, label=f"all-reduce {pg}, {world} ranks")
        bus.set(xlabel="message bytes", ylabel="bus bandwidth (GB/s)", title="all-reduce ceiling",
                xscale="log", yscale="log")
    _legend(fig, rows, columns=3)
    return fig


FIGURES: dict[str, Callable[[Results], Figure]] = {
    "stages": plot_stages,
    "speedup": plot_speedup,
    "baselines": plot_baselines,
    "stage_speedup": plot_stage_speedup,
    "threads": plot_threads,
    "batch": plot_batch,
    "width": plot_width,
    "ladder": plot_ladder,
    "training": plot_training,
    "correctness": plot_correctness,
    "lineprofile": plot_lineprofile,
    "endtoend": plot_endtoend,
    "ranks": plot_ranks,
}


def save(fig: Figure, directory: str | Path, name: str) -> list[Path]:
    """Write ``<directory>/<name>.png`` and ``.pdf``; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.png", directory / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=200)
    fig.savefig(paths[1], metadata={"CreationDate": None})
    return paths


def draw_all(results: Results, directory: str | Path, close: bool = True) -> dict[str, list[Path]]:
    """Draw every figure of :data:`FIGURES` into ``directory``; returns the files written per figure."""
    written = {}
    for name, plot in FIGURES.items():
        fig = plot(results)
        written[name] = save(fig, directory, name)
        if close:
            plt.close(fig)
    return written
