"""Results of dataset checks: one :class:`CheckResult` per check, gathered in a
:class:`ValidationReport` that renders as a dict or a Markdown table (``homogen validate``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MAX_EXAMPLES = 5
"""Failing examples kept per check."""


@dataclass
class CheckResult:
    """One check: ``passed`` is True, False, or None for not applicable (``detail`` says why)."""

    name: str
    passed: bool | None
    checked: int = 0
    failed: int = 0
    detail: str = ""
    examples: list = field(default_factory=list)


@dataclass
class ValidationReport:
    """All checks of one dataset; ``passed`` is False as soon as one check failed."""

    dataset_version: str
    uri: str
    num_pairs: int
    checks: list[CheckResult]
    passed: bool

    def check(self, name: str) -> CheckResult:
        """The check called ``name`` (KeyError naming the known checks otherwise)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check {name!r}; checks: {[c.name for c in self.checks]}")

    @property
    def failed_checks(self) -> list[str]:
        return [c.name for c in self.checks if c.passed is False]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        """A heading line, a table (check, result, samples checked, failed, detail), failing examples."""
        verdict = "PASSED" if self.passed else f"FAILED ({', '.join(self.failed_checks)})"
        lines = [
            f"# Validation of dataset {self.dataset_version}: {verdict}",
            "",
            f"Store `{self.uri}`, {self.num_pairs} pairs.",
            "",
            "| check | result | samples checked | failed | detail |",
            "|---|---|---|---|---|",
        ]
        for c in self.checks:
            result = {True: "pass", False: "**FAIL**", None: "n/a"}[c.passed]
            lines.append(f"| {c.name} | {result} | {c.checked} | {c.failed} | {one_line(c.detail)} |")
        for c in self.checks:
            if c.passed is False and c.examples:
                lines += ["", f"Examples for {c.name}:"]
                lines += [f"- {one_line(format_example(e))}" for e in c.examples]
        return "\n".join(lines) + "\n"


def one_line(text: Any) -> str:
    """``text`` on one line, safe inside a markdown list item or table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_example(example: Any) -> str:
    """One failing example (a dict of where and what) as ``key=value, ...``."""
    if isinstance(example, dict):
        return ", ".join(f"{k}={v}" for k, v in example.items())
    return str(example)
