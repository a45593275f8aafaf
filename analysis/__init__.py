"""Analysis of sweep results: load result directories, summarise, draw the figures.

It reads result files only and never imports a backend, so figures rebuild on any machine::

    from analysis import load_runs, draw_all, write_summaries
    results = load_runs("results/dev-run", "results/gpu-run")
    draw_all(results, "figures")
    write_summaries(results, "report/data")
"""

from analysis.figures import FIGURES, draw_all, save
from analysis.load import Results, load_run, load_runs
from analysis.summary import SUMMARIES, headline, write_summaries

__all__ = ["FIGURES", "SUMMARIES", "Results", "draw_all", "headline", "load_run", "load_runs", "save",
           "write_summaries"]
