"""The errors of the store layer, each a one-line message that names the path and the fix."""

from __future__ import annotations


class StoreError(RuntimeError):
    """A store cannot be opened or written as asked; the message says why and what to do."""


class StoreLocked(StoreError):
    """Another generation is writing the same output right now."""


class StoreConflict(StoreError):
    """The output holds something else (another dataset version, or not a homogen store)."""


class DamagedChunk(StoreError):
    """A chunk failed its checksum, is missing or is not a regular file; the message names the
    array, the chunk and the file."""
