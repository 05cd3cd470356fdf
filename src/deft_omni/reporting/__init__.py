"""Run and sweep reports: folder reading, plots, Markdown/HTML pages (CLI: deft_omni.report)."""

from .folders import ReportError, detect
from .run_page import run_report
from .sweep_page import sweep_report, sweep_rows

__all__ = ["ReportError", "detect", "run_report", "sweep_report", "sweep_rows"]
