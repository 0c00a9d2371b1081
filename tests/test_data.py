"""The chunk-wise loader over real generated stores (zarr and HDF5)."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
import torch

from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate
from homogen.schema import SCHEMA_VERSION, SPLIT_CODES
from homogen.stores import open_dataset
from homogen.model.data import IncompatibleStoreError, PairStream, check_compatible, load_split, make_loader

FORMATS = {"zarr": ("ds.zarr", None), "h5": ("ds.h5", None), "hdf5-flag": ("ds-store", "hdf5")}


@pytest.fixture(scope="session", params=sorted(FORMATS))
def store(request, tmp_path_factory):
    """64 real pairs (16 COCO photographs x 4) in 8 storage chunks of 8, each format in turn."""
    name, fmt = FORMATS[request.param]
    out = tmp_path_factory.mktemp(f"data-{request.param}") / name
    generate(
        GenerateConfig(
            output=str(out),
            format=fmt,
            chunk_size=8,
            shard_size=4,
            sampling=SamplingConfig(pairs_per_image=4),
            source=SourceConfig(max_images=16, test_fraction=0.25, val_fraction=0.3),
        )
    )
    ds = open_dataset(str(out))
    assert ds.manifest["format"] == ("zarr" if request.param == "zarr" else "hdf5")
    assert len(ds.chunks()) == 8
    return ds


@pytest.fixture(scope="session")
def everything(store):
    """All rows of the store in order: {field: array}."""
    return store.read(0, len(store))


def row_ids(offsets: np.ndarray, everything: dict) -> list[int]:
    """Global index of each row, recognised by its (unique, random) offsets."""
    index = {row.tobytes(): i for i, row in enumerate(everything["offsets"])}
    assert len(index) == len(everything["offsets"])
    return [index[row.tobytes()] for row in np.asarray(offsets, np.float32)]


def epoch_rows(loader, epoch: int, everything: dict) -> list[int]:
    loader.dataset.set_epoch(epoch)
    ids = []
    for pairs, offsets in loader:
        batch_ids = row_ids(offsets.numpy(), everything)
        np.testing.assert_array_equal(pairs.numpy(), everything["pairs"][batch_ids])  # pixels follow labels
        ids += batch_ids
    return ids


def test_batches_are_uint8_pairs_and_float_offsets(store):
    pairs, offsets = next(iter(make_loader(store, "train", batch_size=5)))
    assert pairs.dtype == torch.uint8 and pairs.shape == (5, 2, 128, 128)
    assert offsets.dtype == torch.float32 and offsets.shape == (5, 8)


def test_reads_whole_chunks_never_single_samples(store, monkeypatch):
    calls = []
    real_read = store.read_field

    def counting_read(field, start, stop):
        if field == "pairs":
            calls.append((start, stop))
        return real_read(field, start, stop)

    monkeypatch.setattr(store, "read_field", counting_read)
    n = sum(len(p) for p, _ in make_loader(store, None, batch_size=3, buffer_chunks=2))
    assert n == len(store)
    assert sorted(calls) == store.chunks()  # one read per storage chunk, each chunk once
    assert all(b - a == 8 for a, b in calls)


def test_skips_the_pixels_of_chunks_without_rows_of_the_split(store, everything, monkeypatch):
    pixel_reads = []
    real_read = store.read_field

    def counting_read(field, start, stop):
        if field == "pairs":
            pixel_reads.append((start, stop))
        return real_read(field, start, stop)

    with_test_rows = [(a, b) for a, b in store.chunks() if (everything["split"][a:b] == SPLIT_CODES["test"]).any()]
    assert 0 < len(with_test_rows) < len(store.chunks())
    monkeypatch.setattr(store, "read_field", counting_read)
    n = sum(len(p) for p, _ in make_loader(store, "test", batch_size=4))
    assert n == store.split_counts()["test"]
    assert sorted(pixel_reads) == with_test_rows


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("batch_size", [7, 64])
def test_every_sample_exactly_once_per_epoch(store, everything, num_workers, batch_size):
    loader = make_loader(store.uri, None, batch_size=batch_size, num_workers=num_workers, seed=1)
    for epoch in (0, 1):
        ids = epoch_rows(loader, epoch, everything)
        assert sorted(ids) == list(range(len(store)))


def test_workers_take_disjoint_chunk_subsets(store):
    stream = PairStream(store, None, shuffle=True, seed=5)
    plans = [stream.chunk_plan(w, 3) for w in range(3)]
    flat = [c for plan in plans for c in plan]
    assert sorted(flat) == store.chunks()


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_split_filtering_has_no_leakage(store, everything, split):
    ids = epoch_rows(make_loader(store, split, batch_size=4, num_workers=2), 0, everything)
    code = SPLIT_CODES[split]
    expected = np.flatnonzero(everything["split"] == code)
    assert len(expected) > 0
    assert sorted(ids) == expected.tolist()
    other_images = set(everything["image_id"][everything["split"] != code].tolist())
    assert other_images and not other_images & set(everything["image_id"][ids].tolist())
    assert PairStream(store, split).num_samples() == len(expected)


def test_deterministic_for_seed_and_epoch(store, everything):
    def order(seed, epoch, workers=0):
        return epoch_rows(make_loader(store, "train", batch_size=5, seed=seed, num_workers=workers), epoch, everything)

    first = order(seed=3, epoch=0)
    assert order(seed=3, epoch=0) == first
    assert order(seed=3, epoch=1) != first
    assert order(seed=4, epoch=0) != first
    assert sorted(order(seed=4, epoch=0)) == sorted(first)
    assert order(seed=3, epoch=2, workers=2) == order(seed=3, epoch=2, workers=2)


def test_shuffles_chunk_order_and_mixes_rows_across_chunks(store, everything):
    chunk_of = np.repeat(np.arange(8), 8)
    ids = epoch_rows(make_loader(store, None, batch_size=16, buffer_chunks=4, seed=0), 0, everything)
    first_batch_chunks = set(chunk_of[ids[:16]].tolist())
    assert len(first_batch_chunks) > 2  # rows of several chunks in one batch
    stream = PairStream(store, None, seed=0)
    orders = []
    for epoch in range(3):
        stream.set_epoch(epoch)
        orders.append(stream.chunk_plan())
    assert len({tuple(o) for o in orders}) == 3


def test_unshuffled_stream_is_store_order(store, everything):
    ids = epoch_rows(make_loader(store, None, batch_size=10, shuffle=False), 0, everything)
    assert ids == list(range(len(store)))


def test_drop_last_keeps_only_full_batches(store):
    sizes = [len(p) for p, _ in make_loader(store, None, batch_size=10, drop_last=True)]
    assert sizes == [10] * (len(store) // 10)


def test_stream_pickles_without_its_open_store(store):
    stream = PairStream(store, "train")
    clone = pickle.loads(pickle.dumps(stream))
    assert clone._ds is None
    assert clone.num_samples() == stream.num_samples()  # reopens from the uri


def test_load_split_returns_the_split_in_store_order(store, everything):
    pairs, offsets = load_split(store, "test")
    keep = everything["split"] == SPLIT_CODES["test"]
    assert pairs.dtype == np.uint8 and offsets.dtype == np.float32
    np.testing.assert_array_equal(pairs, everything["pairs"][keep])
    np.testing.assert_array_equal(offsets, everything["offsets"][keep])


def test_check_compatible_names_both_values_and_the_fix(store, monkeypatch):
    check_compatible(store, 128)
    with pytest.raises(IncompatibleStoreError, match=r"patch_size 128.*patch_size 64.*patch_size=128"):
        check_compatible(store, 64)
    monkeypatch.setitem(store.manifest, "schema_version", 99)
    with pytest.raises(
        IncompatibleStoreError, match=rf"schema_version 99.*schema_version {SCHEMA_VERSION}.*regenerate"
    ):
        check_compatible(store, 128)


def test_unknown_split_is_refused(store):
    with pytest.raises(ValueError, match="unknown split 'valid'.*train, test, val"):
        PairStream(store, "valid")


@pytest.mark.parametrize("split", [None, "train"])
def test_reader_threads_yield_the_same_batches_as_reading_inline(store, split):
    def batches(read_threads, epoch):
        stream = PairStream(store, split, batch_size=5, seed=7, buffer_chunks=2, read_threads=read_threads)
        stream.set_epoch(epoch)
        return [(p.numpy(), o.numpy()) for p, o in stream]

    for epoch in (0, 1):
        inline, threaded = batches(0, epoch), batches(3, epoch)
        assert len(threaded) == len(inline) > 1
        for (p0, o0), (p1, o1) in zip(inline, threaded):
            np.testing.assert_array_equal(p1, p0)
            np.testing.assert_array_equal(o1, o0)


def test_closing_a_threaded_stream_early_stops_its_readers(store, monkeypatch):
    calls = []
    real_read = store.read_field

    def counting_read(field, start, stop):
        calls.append((start, stop))
        return real_read(field, start, stop)

    stream = PairStream(store, None, batch_size=4, buffer_chunks=1, read_threads=2)
    monkeypatch.setattr(store, "read_field", counting_read)
    it = iter(stream)
    next(it)
    assert pickle.loads(pickle.dumps(stream)).read_threads == 2  # picklable mid-epoch: the pool is not in it
    it.close()
    readers = [t for t in threading.enumerate() if t.name.startswith("PairStream-read")]
    for t in readers:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in readers)
    assert len(calls) < len(store.chunks())  # the look-ahead window at most, not the rest of the epoch
    assert len(set(calls)) == len(calls)  # never a chunk twice


def rank_rows(store, split, world, workers, **kw) -> list[list[int]]:
    """The store rows each rank's loader yields in one epoch (rows from the batches, checked against the labels)."""
    out = []
    for r in range(world):
        loader = make_loader(
            store.uri, split, batch_size=5, num_workers=workers, rank=r, world_size=world, with_rows=True, **kw
        )
        rows = []
        for pairs, offsets, index in loader:
            np.testing.assert_array_equal(offsets.numpy(), store.read_field("offsets", 0, len(store))[index.numpy()])
            rows += index.tolist()
        assert len(loader) == sum(1 for _ in loader)  # __len__: this rank's batches over all its workers
        out.append(rows)
    return out


@pytest.mark.parametrize("world, workers", [(2, 2), (3, 2), (2, 0)])
def test_ranks_and_workers_read_every_pair_exactly_once(store, everything, world, workers):
    per_rank = rank_rows(store, "train", world, workers, seed=3)
    expected = np.flatnonzero(everything["split"] == SPLIT_CODES["train"]).tolist()
    assert sorted(i for rows in per_rank for i in rows) == expected
    assert sum(bool(rows) for rows in per_rank) >= 2  # the work is shared out


def test_a_stream_resumed_from_its_state_reads_exactly_the_remaining_pairs(store, everything, tmp_path):
    stream = PairStream(store, None, batch_size=6, seed=2, with_rows=True)
    stream.set_epoch(1)
    it = iter(stream)
    for _ in range(3):
        stream.mark_read(next(it)[2])
    it.close()
    state = stream.state_dict()
    torch.save(state, tmp_path / "pos.pt")  # plain tensors and values: a weights_only checkpoint holds it
    state = torch.load(tmp_path / "pos.pt", weights_only=True)
    read = set(np.flatnonzero(stream.read_mask()).tolist())
    assert len(read) == 18
    for world, workers in ((1, 0), (2, 2)):  # on any number of ranks and workers
        resumed = []
        for r in range(world):
            again = make_loader(
                store.uri, None, batch_size=6, num_workers=workers, rank=r, world_size=world, with_rows=True
            )
            again.dataset.load_state_dict(state)
            again.dataset.set_epoch(1)  # the same epoch: the position is kept
            assert again.dataset.rank_samples() <= len(store) - 18
            resumed += [i for _, _, rows in again for i in rows.tolist()]
        assert sorted(resumed) == sorted(set(range(len(store))) - read)
    stream.set_epoch(2)  # a new epoch starts from its first pair
    assert not stream.read_mask().any() and sum(len(p) for p, _, _ in stream) == len(store)


def test_a_position_of_another_split_or_store_is_refused(store):
    state = PairStream(store, "train").state_dict()
    with pytest.raises(ValueError, match="split 'train'.*split 'val'.*afresh"):
        PairStream(store, "val").load_state_dict(state)
    with pytest.raises(ValueError, match="rank must be in"):
        PairStream(store, "train", rank=2, world_size=2)


def test_persistent_workers_follow_set_epoch_and_forget_a_resumed_position(store, everything):
    def fresh(epoch):
        return epoch_rows(make_loader(store.uri, None, batch_size=5, num_workers=2, seed=4), epoch, everything)

    loader = make_loader(store.uri, None, batch_size=5, num_workers=2, seed=4, with_rows=True)
    assert loader.persistent_workers
    half = PairStream(store, None, seed=4)
    half.set_epoch(1)
    read = np.r_[0:24, 24 : len(store) : 2]  # three whole chunks, then every other row
    half.mark_read(read)
    loader.dataset.load_state_dict(half.state_dict())  # resumed mid-epoch 1
    loader.dataset.set_epoch(1)
    assert sorted(i for _, _, rows in loader for i in rows.tolist()) == sorted(set(range(len(store))) - set(read))
    for epoch in (2, 3):  # the same worker processes, the next epochs in full, in their own order
        loader.dataset.set_epoch(epoch)
        ids = [i for _, _, rows in loader for i in rows.tolist()]
        assert sorted(ids) == list(range(len(store)))
        assert ids == fresh(epoch)  # what a new loader yields for that epoch
