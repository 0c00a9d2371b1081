"""Process environment variables changed for the length of a block, then put back as they were."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


@contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set each variable of ``values`` (``None``: unset it) inside the block; restore them after it.

    Only those variables change; the rest of ``os.environ`` is left alone (other threads keep reading it).
    """
    saved = {name: os.environ.get(name) for name in values}

    def apply(new: Mapping[str, str | None]) -> None:
        for name, value in new.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    apply(values)
    try:
        yield
    finally:
        apply(saved)
