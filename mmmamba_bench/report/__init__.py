"""The ``report`` part of mmmamba-bench: measured scores, speed and latency / memory beside the paper's numbers.

Importing this package is cheap: pandas and matplotlib are imported inside the functions that need them.
"""

from .inputs import ReportInputError
from .markdown import build_report
from .paper import load_paper
from .tables import markdown_table, render_table

__all__ = ["ReportInputError", "build_report", "load_paper", "markdown_table", "render_table"]
