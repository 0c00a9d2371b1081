"""One line describing why pydantic refused a config, for every command line and flow of the project.

Pure (pydantic and :mod:`homogen.redaction` only): ``homogen generate`` (library), ``homogen run``
and the flows' parameters (:mod:`homogen.flows.config`) all describe errors with :func:`describe_errors`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from homogen.redaction import redact


def describe_errors(exc: ValidationError, given: dict[str, Any] | None = None) -> str:
    """``invalid parameters: generate.sampling: <why>; ... (given: rho=100)``: one prefix, one part per pydantic error.

    Each part names where (the field's dotted path) unless the error is about the whole model, whose
    validators' messages already name the fields; the flat parameters that were set follow, redacted.
    """
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"])
        why = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {why}" if where else why)
    msg = "invalid parameters: " + "; ".join(parts)
    if given:
        msg += " (given: " + ", ".join(f"{k}={redact(v)!r}" for k, v in given.items()) + ")"
    return msg
