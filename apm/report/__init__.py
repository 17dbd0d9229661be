"""Stage 7 reports: per-system results.{json,md} and plots, and the cross-system RESULTS.md."""

from apm.report.system import evaluate_system, render_system_md, report_system
from apm.report.table import (
    ResultsTable,
    collect_results,
    render_results_md,
    render_results_table,
)

__all__ = [
    "ResultsTable",
    "collect_results",
    "evaluate_system",
    "render_results_md",
    "render_results_table",
    "render_system_md",
    "report_system",
]
