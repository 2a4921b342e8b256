"""memaudit statistics: Arrow tables of per-image recovery results in; summary, tests,
histograms, verdict and a self-contained HTML report out (DESIGN.md §2, §5).

pyarrow, numpy, scipy and matplotlib (Agg) only: no torch, no ray, so results from any
source (the Ray job, the in-process API, a table written by hand) can be audited anywhere.

    from stats import reduce, render_report
    reduction = reduce(results, rejects)            # results: image_id, split, error, ...
    print(reduction.verdict.sentence)               # .summary .tests .histograms .ranking too
    html = render_report(reduction, results=results)

    report_from_output("s3://bucket/audits/run/")  # what `memaudit report OUT` does
"""

from stats.errors import StatsError
from stats.io import read_output, write_outputs
from stats.reduction import Reduction, reduce
from stats.report.render import render_report, report_from_output
from stats.settings import StatsSettings
from stats.start_cap import StartCap, measure_start_cap
from stats.text import format_summary
from stats.verdict import Verdict

__all__ = [
    "Reduction",
    "StatsError",
    "StartCap",
    "StatsSettings",
    "Verdict",
    "format_summary",
    "measure_start_cap",
    "read_output",
    "reduce",
    "render_report",
    "report_from_output",
    "write_outputs",
]
