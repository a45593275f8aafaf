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
    BACKEND_MARKERS,
    STAGE_COLORS,
    STAGE_ORDER,
    backend_color,
    ladder_color,
    ladder_order,
    ordered,
)

PANEL = (3.6, 2.7)  # inches per panel
LEGEND_WIDTH = 1.9  # inches to the right of the panels
# Sizes chosen for figures printed about 17 cm wide.
plt.rcParams.update({"font.size": 8.5, "axes.titlesize": 8.5, "axes.labelsize": 8.5, "legend.fontsize": 8,
                     "xtick.labelsize": 7.5, "ytick.labelsize": 7.5})


def _grid(n_rows: int, n_cols: int, **options: object) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(max(n_rows, 1), max(n_cols, 1), squeeze=False, layout="constrained",
                             figsize=(PANEL[0] * max(n_cols, 1) + LEGEND_WIDTH, PANEL[1] * max(n_rows, 1)),
                             **options)
    return fig, axes


def _plain_log_axis(axis: Axis) -> None:
    """Log-scaled axis labelled 1, 2, 4 ... rather than powers."""
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _empty(title: str, why: str) -> Figure:
    fig, axes = _grid(1, 1)
    axes[0, 0].text(0.5, 0.5, why, ha="center", va="center", wrap=True, transform=axes[0, 0].transAxes)
    axes[0, 0].set_axis_off()
    fig.suptitle(title)
    return fig


def _runs(table: pd.DataFrame) -> list[tuple[str, str]]:
    """``(run_id, machine)`` pairs in first-seen order."""
    return list(dict.fromkeys(zip(table["run_id"], table["machine"], strict=True)))


def _legend(fig: Figure, axes: np.ndarray) -> None:
    handles, labels = {}, []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if handles:
        fig.legend([handles[label] for label in labels], labels, loc="outside right upper", frameon=False)


def plot_stages(results: Results) -> Figure:
    """How each backend's separately timed stages share its work, one panel per run and network (two panels
    to a row), with the whole training step's median time at the end of each bar. ``transfer`` (GPU backends)
    is stacked last."""
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
                             figsize=(2 * PANEL[0] + LEGEND_WIDTH, sum(0.2 * h + 0.8 for h in heights)),
                             gridspec_kw={"height_ratios": [0.2 * h + 0.8 for h in heights]})
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
        for y, seconds in enumerate(data["step_s"]):
            ax.text(102, y, duration(seconds), va="center", fontsize=7)
        ax.set_xlim(0, 130)
        ax.set_xticks([0, 25, 50, 75, 100])
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7.5)
        ax.set_xlabel("share of the stages (%); whole step at right", fontsize=8)
        ax.set_title(f"{network}, batch {batch} — {machine}", fontsize=8)
    _legend(fig, axes)
    return fig


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
    fig, axes = _grid(1, len(runs))
    for col, (run_id, machine) in enumerate(runs):
        data = table[table.run_id == run_id]
        networks = list(dict.fromkeys(data.network))
        backends = ordered(data.backend)
        width = 0.8 / len(backends)
        ax = axes[0, col]
        for index, backend in enumerate(backends):
            rows = data[data.backend == backend].set_index("network").reindex(networks)
            ax.bar(np.arange(len(networks)) + index * width, rows["speedup"], width, color=backend_color(backend),
                   label=f"{backend} (vs {rows['baseline'].dropna().iloc[0]})")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(networks)) + 0.4 - width / 2, networks, rotation=20)
        ax.set_ylabel("speed-up of one step (x)")
        ax.set_title(machine, fontsize=9)
    _legend(fig, axes)
    return fig


def plot_threads(results: Results) -> Figure:
    """Speed-up over 1 thread against thread count, with the ideal line and, on the original study's
    network, its points (179.3 s on 1 thread, 40.1 s on 16: 4.47x)."""
    table = summary.thread_scaling(results)
    if table.empty:
        return _empty("Thread scaling", "no threads study in these runs")
    runs = _runs(table)
    panels = {run_id: list(dict.fromkeys(zip(table[table.run_id == run_id].network,
                                              table[table.run_id == run_id].batch, strict=True)))
              for run_id, _ in runs}
    fig, axes = _grid(len(runs), max(len(p) for p in panels.values()))
    authors = summary.AUTHORS_THREADS
    for (row, (run_id, machine)), col in ((r, c) for r in enumerate(runs) for c in range(axes.shape[1])):
        ax = axes[row, col]
        if col >= len(panels[run_id]):
            ax.set_axis_off()
            continue
        network, batch = panels[run_id][col]
        data = table[(table.run_id == run_id) & (table.network == network) & (table.batch == batch)]
        ours = network == summary.AUTHORS_NETWORK
        most = max(int(data.threads.max()), int(authors.threads.max()) if ours else 1)
        ax.plot([1, most], [1, most], ":", color="grey", label="ideal")
        if ours:
            ax.plot(authors.threads, authors.speedup, "k*--", markersize=9,
                    label="original study (5h300, 2x Xeon)")
        for backend in ordered(data.backend):
            rows = data[data.backend == backend]
            ax.plot(rows.threads, rows.speedup, marker=BACKEND_MARKERS.get(backend, "o"),
                    color=backend_color(backend), label=backend)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        _plain_log_axis(ax.xaxis)
        _plain_log_axis(ax.yaxis)
        ax.set_xlabel("threads")
        ax.set_ylabel("speed-up over 1 thread (x)")
        ax.set_title(f"{network}, batch {batch}\n{machine}", fontsize=9)
    _legend(fig, axes)
    return fig


def plot_batch(results: Results) -> Figure:
    """Samples per second over batch size (left) and throughput relative to batch 1 (right, with the
    original study's batch 1 and 512 runs when the study ran on its network)."""
    table = summary.batch_effect(results)
    if table.empty:
        return _empty("Batch size", "no batch study in these runs")
    runs = _runs(table)
    fig, axes = _grid(len(runs), 2)
    authors = summary.AUTHORS_BATCH
    for row, (run_id, machine) in enumerate(runs):
        data = table[table.run_id == run_id]
        for backend in ordered(data.backend):
            rows = data[data.backend == backend]
            style = {"marker": BACKEND_MARKERS.get(backend, "o"), "color": backend_color(backend), "label": backend}
            axes[row, 0].plot(rows.batch, rows.samples_per_s, **style)
            axes[row, 1].plot(rows.batch, rows.relative_throughput, **style)
        if data.network.iloc[0] == summary.AUTHORS_NETWORK:
            axes[row, 1].plot(authors.batch, authors.relative_throughput, "k*--", markersize=9,
                              label="original study (16 threads)")
        axes[row, 0].set_ylabel("training samples per second")
        axes[row, 1].set_ylabel("throughput relative to batch 1 (x)")
        for ax in axes[row]:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            _plain_log_axis(ax.xaxis)
            ax.set_xlabel("batch size")
            ax.set_title(f"{data.network.iloc[0]}\n{machine}", fontsize=9)
    _legend(fig, axes)
    return fig


def plot_width(results: Results) -> Figure:
    """Step GFLOP/s over layer width (square layers), with the matrix-product ceilings measured in the same
    run as dashed lines: the launch-bound to compute-bound crossover, roofline-style."""
    table = summary.width_table(results)
    if table.empty:
        return _empty("Throughput over width", "no width study in these runs")
    runs = _runs(table)
    fig, axes = _grid(1, len(runs))
    for col, (run_id, machine) in enumerate(runs):
        ax = axes[0, col]
        data = table[table.run_id == run_id]
        for backend in ordered(data.backend):
            rows = data[data.backend == backend]
            ax.plot(rows.width, rows.gflops, marker=BACKEND_MARKERS.get(backend, "o"),
                    color=backend_color(backend), label=backend)
        ceilings = data.dropna(subset=["ceiling_gflops"]).drop_duplicates("ceiling_impl")
        for ceiling in ceilings.itertuples():
            ax.axhline(ceiling.ceiling_gflops, linestyle="--", color=backend_color(ceiling.ceiling_impl),
                       label=f"{ceiling.ceiling_impl} matrix product")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        _plain_log_axis(ax.xaxis)
        ax.set_xlabel("layer width")
        ax.set_ylabel("GFLOP/s of one training step")
        ax.set_title(f"{data.network.iloc[0].count('-')} square layers, batch {data.batch.iloc[0]}\n{machine}",
                     fontsize=9)
    _legend(fig, axes)
    return fig


def plot_ladder(results: Results) -> Figure:
    """Each matrix-product implementation as % of the library ceiling measured in the same run."""
    table = summary.ladder_table(results)
    table = table[table.status == "ok"] if not table.empty else table
    if table.empty:
        return _empty("Matrix-product ladder", "no ladder measured in these runs")
    panels = list(dict.fromkeys(zip(table.run_id, table.machine, table.device, strict=True)))
    fig, axes = _grid(1, len(panels))
    for col, (run_id, machine, device) in enumerate(panels):
        ax = axes[0, col]
        data = table[(table.run_id == run_id) & (table.device == device)].set_index("impl")
        data = data.loc[ladder_order(data.index)]
        bars = ax.bar(data.index, data.pct_of_ceiling, color=[ladder_color(i) for i in data.index])
        ax.bar_label(bars, labels=[f"{g:,.0f}" if g >= 100 else f"{g:.3g}" for g in data.gflops], fontsize=7,
                     padding=2)
        ax.margins(y=0.12)
        ax.axhline(100, color="black", linewidth=0.8)
        ax.set_ylabel(f"% of {data.ceiling_impl.iloc[0]} (GFLOP/s on bars)")
        ax.set_title(f"{device.upper()}, n = {int(data.n.iloc[0])}\n{machine}", fontsize=9)
        ax.tick_params(axis="x", rotation=45)
    return fig


def plot_training(results: Results) -> Figure:
    """Training loss and test accuracy per epoch, every backend overlaid (curves should coincide)."""
    rows = results.training
    rows = rows[rows.status == "ok"] if not rows.empty else rows
    if rows.empty:
        return _empty("Training curves", "no training curves in these runs")
    runs = _runs(rows)
    fig, axes = _grid(len(runs), 2)
    for row, (run_id, machine) in enumerate(runs):
        data = rows[rows.run_id == run_id]
        for backend in ordered(data.backend):
            curve = data[data.backend == backend]
            style = {"marker": BACKEND_MARKERS.get(backend, "o"), "color": backend_color(backend), "label": backend,
                     "alpha": 0.8, "markersize": 4}
            axes[row, 0].plot(curve.epoch, curve.train_loss, **style)
            axes[row, 1].plot(curve.epoch, curve.test_accuracy, **style)
        dataset, network = data.dataset.iloc[0], data.network.iloc[0]
        title = f"{dataset}\n{machine}" if dataset == network else f"{dataset} ({network})\n{machine}"
        axes[row, 0].set(xlabel="epoch", ylabel="mean training loss", yscale="log")
        axes[row, 1].set(xlabel="epoch", ylabel="test accuracy")
        for ax in axes[row]:
            ax.set_title(title, fontsize=9)
    _legend(fig, axes)
    return fig


def plot_correctness(results: Results) -> Figure:
    """Worst relative error against the float64 reference, backend × quantity, per run (log10 colour)."""
    table = summary.correctness_table(results)
    if table.empty:
        return _empty("Correctness", "no correctness checks in these runs")
    runs = _runs(table)
    heights = [table[table.run_id == run_id].backend.nunique() for run_id, _ in runs]
    fig, axes = plt.subplots(len(runs), 1, squeeze=False, layout="constrained",
                             figsize=(PANEL[0] * 2, 0.3 * sum(heights) + 0.9 * len(runs)),
                             gridspec_kw={"height_ratios": heights})
    columns = list(summary.ERROR_COLUMNS)
    for col, (run_id, machine) in enumerate(runs):
        data = table[table.run_id == run_id].groupby("backend")[columns].max()
        data = data.loc[ordered(data.index)].rename(columns=lambda c: c.removeprefix("err_"))
        # Exact agreement (the reference against itself) has no logarithm: coloured at the floor, labelled.
        values = data.astype(float)
        logs = np.log10(values.clip(lower=1e-12))
        labels = np.where(values.to_numpy() == 0, "exact", logs.map("{:.1f}".format).to_numpy())
        ax = axes[col, 0]
        sns.heatmap(logs, ax=ax, annot=labels, fmt="", cmap="viridis", vmin=-12, vmax=-4,
                    annot_kws={"fontsize": 8}, cbar_kws={"label": "log10 of the worst\nrelative error"})
        ax.set_title(f"{machine}: worst error over every checked configuration "
                     f"(tolerance {table.tolerance.iloc[0]:.0e})", fontsize=9)
        ax.set_ylabel("")
        ax.tick_params(axis="x", rotation=0, labelsize=8)
        ax.tick_params(axis="y", rotation=0, labelsize=8)
    return fig


def plot_lineprofile(results: Results) -> Figure:
    """Where a small network's profiled step goes, as disjoint shares of the step: the interface's input
    checks (pure Python), the rest of ``prepare``, forward, backprop and update (or the fused
    ``train_step`` where a backend never calls the stages), and the rest of the driver."""
    table = summary.lineprofile_table(results)
    if table.empty:
        return _empty("Python overhead", "no line profiles in these runs")
    runs = _runs(table)
    fig, axes = _grid(1, len(runs))
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
            ax.text(max(left.max(), 100) + 1, y, duration(seconds), va="center", fontsize=8)
        ax.set_xlim(0, max(left.max(), 100) * 1.18)
        ax.invert_yaxis()
        ax.set_xlabel("share of the profiled step (%); unprofiled step time at right")
        ax.set_title(f"{data.network.iloc[0]}, batch {data.batch.iloc[0]}\n{machine}", fontsize=9)
    _legend(fig, axes)
    return fig


FIGURES: dict[str, Callable[[Results], Figure]] = {
    "stages": plot_stages,
    "speedup": plot_speedup,
    "threads": plot_threads,
    "batch": plot_batch,
    "width": plot_width,
    "ladder": plot_ladder,
    "training": plot_training,
    "correctness": plot_correctness,
    "lineprofile": plot_lineprofile,
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
