"""The HTML pages: report.html (render.py: first screen, then folded sections), the history, sweep and compare
pages, and the figures, tables and text they share (page.py holds the one look)."""

from stats.report.render import render_report, report_from_output

__all__ = ["render_report", "report_from_output"]
