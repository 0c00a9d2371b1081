"""The old import path of :mod:`homogen.store` (kept so that ``from homogen.stores import
open_dataset`` goes on working); new code imports from :mod:`homogen.store`."""

from homogen.schema import FIELDS, SPLIT_CODES
from homogen.store import *  # noqa: F403 - the old path re-exports the package's public names
from homogen.store import __all__ as _store_names

__all__ = [*_store_names, "FIELDS", "SPLIT_CODES"]
