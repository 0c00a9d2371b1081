"""The old import path of :mod:`homogen.store.paths` and :mod:`homogen.store.lock` (kept for
existing imports); new code imports from those modules."""

from homogen.store.errors import StoreConflict, StoreError, StoreLocked
from homogen.store.lock import lock_path, output_lock, read_lock
from homogen.store.paths import atomic_write, check_replaceable, check_writable, is_local, local_path, real_path

__all__ = [
    "StoreConflict",
    "StoreError",
    "StoreLocked",
    "atomic_write",
    "check_replaceable",
    "check_writable",
    "is_local",
    "local_path",
    "lock_path",
    "output_lock",
    "read_lock",
    "real_path",
]
