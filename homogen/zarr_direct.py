"""Writing a whole Zarr v3 array into a local folder byte for byte as zarr writes it, without
zarr's asyncio event loop and thread pool.

zarr 3 sends every chunk of every array through an event loop and worker threads; for a staged
shard of six arrays (one chunk each) that costs more CPU than the compression itself (about 25 of
45 ms per 64-image shard, docs/BENCHMARKS.md, generation). Here an array's ``zarr.json`` is made by
zarr itself, once per (field, rows, patch size, chunk size), in memory; its chunks are encoded by
the libraries zarr's codecs call (numcodecs' Zstd and Blosc, google_crc32c) and written as plain
files. Each template is checked when it is made: a test array written both ways must give the
same bytes in every file, else (or for a codec chain not known here) zarr writes the array.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import google_crc32c
import numpy as np
import zarr
from numcodecs import Blosc, Zstd
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec
from zarr.storage import MemoryStore

_BLOSC_SHUFFLE = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}


@dataclass(frozen=True)
class ArrayTemplate:
    """What writing one array needs: zarr's metadata document, chunk length, dtype, encoders."""

    metadata: bytes
    chunk_len: int
    dtype: np.dtype
    encoders: tuple[Callable[[bytes], bytes], ...]

    def chunk_files(self, data: np.ndarray) -> list[tuple[str, bytes]]:
        """(key, bytes) of each chunk of ``data`` along axis 0 (the last one padded with zeros,
        zarr's fill value here, to the full chunk shape, as zarr stores it)."""
        c, n = self.chunk_len, len(data)
        files = []
        for k in range(-(-n // c)):
            block = data[k * c : (k + 1) * c]
            if len(block) < c:
                block = np.concatenate([block, np.zeros((c - len(block),) + block.shape[1:], block.dtype)])
            b = np.ascontiguousarray(block, self.dtype).tobytes()
            for encode in self.encoders:
                b = encode(b)
            files.append(("c/" + "/".join([str(k)] + ["0"] * (data.ndim - 1)), b))
        return files


def _crc32c_append(b: bytes) -> bytes:
    return b + np.uint32(google_crc32c.value(b)).astype("<u4").tobytes()


def _encoders(codecs) -> tuple[tuple[Callable[[bytes], bytes], ...], np.dtype | None]:
    """numcodecs/google_crc32c equivalents of zarr ``codecs`` and the byte order, or (None, None)."""
    first, rest = codecs[0], codecs[1:]
    if not isinstance(first, BytesCodec):
        return None, None
    order = ">" if first.endian is not None and first.endian.value == "big" else "<"
    out = []
    for c in rest:
        if isinstance(c, ZstdCodec):
            out.append(Zstd(level=c.level, checksum=c.checksum).encode)
        elif isinstance(c, BloscCodec) and c.typesize is not None:
            out.append(Blosc(cname=c.cname.value, clevel=c.clevel, shuffle=_BLOSC_SHUFFLE[c.shuffle.value],
                             blocksize=c.blocksize, typesize=c.typesize).encode)
        elif isinstance(c, Crc32cCodec):
            out.append(_crc32c_append)
        else:
            return None, None
    return tuple(out), order


def _make_template(create: Callable[[zarr.Group], zarr.Array], name: str) -> ArrayTemplate | None:
    store = MemoryStore()
    arr = create(zarr.open_group(store, mode="w"))
    encoders, order = _encoders(arr.metadata.codecs)
    if encoders is None or arr.ndim < 1:
        return None
    template = ArrayTemplate(store._store_dict[f"{name}/zarr.json"].to_bytes(), arr.chunks[0],
                             arr.dtype.newbyteorder(order), encoders)
    # the check: a test array (not all fill value, a short last chunk where the shape has one) both ways
    test = (np.arange(int(np.prod(arr.shape))) % 251).astype(arr.dtype).reshape(arr.shape)
    arr[...] = test
    ours = dict(template.chunk_files(test))
    theirs = {k[len(name) + 1 :]: v.to_bytes() for k, v in store._store_dict.items()
              if k.startswith(f"{name}/c/")}
    return template if ours == theirs else None


_TEMPLATES: dict[Hashable, ArrayTemplate | None] = {}


def write_array(folder: str, name: str, data: np.ndarray, create: Callable[[zarr.Group], zarr.Array],
                key: Hashable) -> bool:
    """Write ``data`` as array ``name`` of the local Zarr group ``folder``, as ``create(group)``
    followed by ``array[...] = data`` would. Returns False, having written nothing, where this
    path does not apply (empty data, or a codec chain it cannot reproduce): then use zarr.

    Args:
        folder: local path of an existing zarr v3 group that does not yet hold ``name``.
        data: the whole array (``len(data)`` rows).
        create: makes the (empty) array in a given group: the same call zarr's path uses.
        key: identifies ``create``'s result (field, rows, sizes): its template is made once.
    """
    if not len(data):
        return False
    if key not in _TEMPLATES:
        _TEMPLATES[key] = _make_template(create, name)
    template = _TEMPLATES[key]
    if template is None:
        return False
    root = os.path.join(folder, name)
    os.makedirs(root)
    files = [("zarr.json", template.metadata)] + template.chunk_files(data)
    for rel, b in files:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b)
    return True
