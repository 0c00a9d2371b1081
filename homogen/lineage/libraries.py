"""The versions of the code that made a store's bytes: recorded in the manifest (``code``).

The dataset version (:mod:`homogen.versions`) names the recipe, the source bytes and the
generator; it does not name the libraries that compute the pixels, so the same version made on
another machine may hold other bytes. The manifest therefore records them:

- pixel-deciding (:data:`PIXEL_LIBRARIES`): numpy (the random generator of the corners and
  offsets), OpenCV (resize and warp), simplejpeg and the libjpeg-turbo inside its wheel (JPEG decoding);
- storage: homogen, zarr, h5py and its HDF5 (they decide how the arrays are stored, not their values).

Each shard records the pixel-deciding versions of the process that made it (a Dask worker may run
on another machine), and commit refuses shards made by other versions than the store's
(:func:`shards_mismatch`). A partly generated store is resumed only with the same pixel-deciding
versions (:func:`resume_mismatch`): otherwise the shards already written and those still to come would be
made by different code, and the finished store would match neither. Whether the stored values
themselves match is what the array digest (:mod:`homogen.lineage.array_digest`) records.
"""

from __future__ import annotations

import functools
import re

__all__ = [
    "PIXEL_LIBRARIES",
    "code_versions",
    "libjpeg_turbo_version",
    "pixel_versions",
    "resume_mismatch",
    "shards_mismatch",
]

PIXEL_LIBRARIES = ("numpy", "opencv", "simplejpeg", "libjpeg-turbo")
"""The libraries whose versions decide pixel and label values (the keys of ``code`` in the manifest)."""

_JVERSION = re.compile(rb"libjpeg-turbo version ([0-9][0-9A-Za-z.\-]*)")


@functools.cache
def libjpeg_turbo_version() -> str:
    """The version of the libjpeg-turbo that simplejpeg's wheel links in, or ``"unknown"``.

    simplejpeg has no API for it (1.9: ``decode_jpeg``, ``encode_jpeg``, ...), and the library is
    linked statically into its extension module. libjpeg-turbo embeds its version string there
    (``libjpeg-turbo version 3.1.2 (build 20251010)``, the string its ``cjpeg -version`` prints), so
    it is read from that file: one read of a ~1 MB file, once per process. This reads beneath
    simplejpeg's API because there is no other way to name the decoder (docs/BENCHMARKS.md).
    """
    try:
        import simplejpeg._jpeg as ext

        with open(ext.__file__, "rb") as f:
            found = _JVERSION.search(f.read())
    except (ImportError, OSError, AttributeError, TypeError):
        return "unknown"
    return found.group(1).decode() if found else "unknown"


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    import cv2
    import h5py
    import numpy
    import simplejpeg
    import zarr

    import homogen

    return (
        ("homogen", homogen.__version__),
        ("numpy", numpy.__version__),
        ("opencv", cv2.__version__),
        ("simplejpeg", simplejpeg.__version__),
        ("libjpeg-turbo", libjpeg_turbo_version()),
        ("zarr", zarr.__version__),
        ("h5py", h5py.__version__),
        ("hdf5", h5py.version.hdf5_version),
    )


def code_versions() -> dict[str, str]:
    """``{library: version}`` of this process: the manifest's ``code`` section."""
    return dict(_versions())


def resume_mismatch(header: dict, staged: dict[int, dict]) -> str | None:
    """Why a partly generated store with ``header`` and ``staged`` shards (``{index: complete info}``)
    must not be resumed by this process, or None.

    The reason names every pixel-deciding library whose version differs, with both versions, and
    every staged shard made by other versions than the header's; a header with no ``code`` section
    (written by a homogen that did not record it) cannot be shown to match, and is refused too.
    """
    recorded = header.get("code")
    now = code_versions()
    if not isinstance(recorded, dict):
        return (
            "records no library versions (it was started by an older homogen), so its shards may differ from new ones"
        )
    differ = [
        f"{lib} {recorded.get(lib, 'unrecorded')} there, {now[lib]} here"
        for lib in PIXEL_LIBRARIES
        if recorded.get(lib) != now[lib]
    ]
    if differ:
        return "was started with other pixel-deciding libraries (" + "; ".join(differ) + ")"
    if why := shards_mismatch(staged, recorded):
        return f"holds {why}"
    return None


def pixel_versions() -> dict[str, str]:
    """``{library: version}`` of the pixel-deciding libraries of this process (recorded per shard)."""
    now = code_versions()
    return {lib: now[lib] for lib in PIXEL_LIBRARIES}


def shards_mismatch(infos: dict[int, dict], code: dict) -> str | None:
    """Why staged shards (``{shard index: its complete info}``) cannot be resumed or committed into a
    store whose manifest records ``code``, or None: a shard made by other pixel-deciding versions,
    or by a homogen that did not record them."""
    bad = []
    for index, info in sorted(infos.items()):
        made = info.get("code")
        if not isinstance(made, dict):
            bad.append(f"shard {index} (no library versions recorded)")
            continue
        differ = [f"{lib} {made.get(lib)}" for lib in PIXEL_LIBRARIES if made.get(lib) != code.get(lib)]
        if differ:
            bad.append(f"shard {index} ({', '.join(differ)})")
    if not bad:
        return None
    want = ", ".join(f"{lib} {code.get(lib)}" for lib in PIXEL_LIBRARIES)
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return (
        f"{len(bad)} staged shard(s) made by other pixel-deciding libraries than the store's ({want}): "
        f"{', '.join(bad[:5])}{more}"
    )
