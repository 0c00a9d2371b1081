"""The errors of the store layer, each a one-line message that names the path and the fix."""

from __future__ import annotations

from pydantic import ValidationError

MAX_PROBLEMS = 3
"""Problems a refusal names from one pydantic check (the count says how many there are)."""


class StoreError(RuntimeError):
    """A store cannot be opened or written as asked; the message says why and what to do."""


class StoreLocked(StoreError):
    """Another generation is writing the same output right now."""


class StoreConflict(StoreError):
    """The output holds something else (another dataset version, or not a homogen store)."""


class DamagedChunk(StoreError):
    """A chunk failed its checksum, is missing or is not a regular file; the message names the
    array, the chunk and the file."""


def validation_problems(exc: ValidationError, whole: str) -> str:
    """pydantic's errors as ``loc: msg; ...`` (at most :data:`MAX_PROBLEMS`, then how many more);
    ``whole`` names an error about the whole document (``manifest``, ``table``)."""
    errors = exc.errors(include_url=False)
    shown = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or whole}: {e['msg']}" for e in errors[:MAX_PROBLEMS])
    return shown + (f" (and {len(errors) - MAX_PROBLEMS} more)" if len(errors) > MAX_PROBLEMS else "")
