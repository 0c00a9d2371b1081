"""How a message names an option: ``--overwrite`` to a command-line user, ``overwrite=True`` to a Python caller.

Library errors are read by both audiences. A command of the ``homogen`` command line runs the library
inside :func:`command_line`; messages spell every option they suggest with :func:`option`, which
answers in the caller's terms (a context variable: other threads and processes keep the Python
spelling unless they enter :func:`command_line` themselves).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["command_line", "option"]

_COMMAND_LINE: ContextVar[bool] = ContextVar("homogen_command_line", default=False)


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Within this block, :func:`option` spells options as command-line flags."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def option(name: str, value: object = True) -> str:
    """The option ``name`` set to ``value``, as the caller writes it.

    ``option("overwrite")``: ``--overwrite`` on the command line, ``overwrite=True`` in Python;
    ``option("shard_size", 4)``: ``--shard-size 4``, ``shard_size=4``.
    """
    if _COMMAND_LINE.get():
        flag = "--" + name.replace("_", "-")
        return flag if value is True else f"{flag} {value}"
    return f"{name}={value!r}"
