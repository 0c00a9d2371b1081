"""The old import path of :mod:`homogen.validation` (kept so that ``from homogen.validate import
validate_dataset`` goes on working); new code imports from :mod:`homogen.validation`."""

from homogen.validation import (
    MAX_EXAMPLES,
    PER_PAIR_CHECKS,
    CheckResult,
    ValidationReport,
    pixel_tolerance,
    validate_dataset,
    warp_a_by_h,
)

__all__ = [
    "MAX_EXAMPLES",
    "PER_PAIR_CHECKS",
    "CheckResult",
    "ValidationReport",
    "pixel_tolerance",
    "validate_dataset",
    "warp_a_by_h",
]
