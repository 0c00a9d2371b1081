"""The old import path of :mod:`homogen.validation.report` (kept for existing imports)."""

from homogen.validation.report import MAX_EXAMPLES, CheckResult, ValidationReport, format_example, one_line

__all__ = ["MAX_EXAMPLES", "CheckResult", "ValidationReport", "format_example", "one_line"]
