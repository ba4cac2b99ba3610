"""The index layer on synthetic vectors: structure choice, add/remove by content, atomic saves, checks."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import numpy as np
import pytest

from mmodal.indexes import vectors
from mmodal.indexes.collection import ImageIndex
from mmodal.indexes.errors import IndexBusyError, IndexCorruptedError, IndexNotFoundError, ModelMismatchError
from mmodal.indexes.hits import RowCache
from mmodal.indexes.integrity import INDEX_FILE
from mmodal.indexes.manifest import MANIFEST_FILE, Manifest, ModelIdentity
from mmodal.indexes.metadata import METADATA_FILE, SCHEMA, MetadataStore, NewItem

DIM = 16
MODEL = ModelIdentity(name="test", weights_hash="ab" * 16, dim=DIM)


def _unit(rng, n):
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _items(rng, n, start=0):
    return [
        NewItem(f"/photos/{i}.png", f"hash{i}", 100 + i, 1_000 + i, 64, 48, "PNG", v)
        for i, v in zip(range(start, start + n), _unit(rng, n))
    ]


def test_structure_is_chosen_by_size_and_memory():
    assert vectors.choose_factory(10_000, 128, memory=8 << 30) == "Flat"
    assert vectors.choose_factory(1_000_000, 128, memory=8 << 30) == "HNSW32,Flat"
    small_memory = vectors.choose_factory(1_000_000, 128, memory=512 << 20)
    assert small_memory.startswith("IVF") and small_memory.endswith("PQ32")


def test_exact_search_finds_each_vector_and_survives_reopening(tmp_path):
    rng = np.random.default_rng(0)
    items = _items(rng, 300)
    with ImageIndex.open_for_writing(tmp_path, MODEL) as index:
        index.write_batch(items)
        assert index.sync() == (300, 0)
    with ImageIndex.open(tmp_path, MODEL) as index:
        hits = index.search(np.stack([items[7].vector, items[123].vector]), k=3)
        assert [h[0].path for h in hits] == ["/photos/7.png", "/photos/123.png"]
        assert hits[0][0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[0][0].score >= hits[0][1].score >= hits[0][2].score
        assert index.stats()["images"] == 300 and index.stats()["index_type"] == "Flat"


def test_a_searching_index_reads_each_row_once_and_holds_a_bounded_number():
    asked: list[list[int]] = []

    def fetch(ids):
        asked.append(ids)
        return {i: f"row {i}" for i in ids if i != 99}  # 99 is not stored

    cache = RowCache(fetch, capacity=3)
    assert cache.get([1, 2, 2]) == {1: "row 1", 2: "row 2"}
    assert cache.get([2, 3, 99]) == {2: "row 2", 3: "row 3"}
    assert asked == [[1, 2], [3, 99]]  # only what it did not hold, and each id once
    cache.get([4])  # beyond capacity: the least recently used (1) goes
    assert cache.get([1, 4]) == {1: "row 1", 4: "row 4"} and asked[-1] == [1]


def test_images_are_found_by_id_and_search_reads_the_store_once(tmp_path):
    rng = np.random.default_rng(12)
    items = _items(rng, 20)
    with ImageIndex.open_for_writing(tmp_path, MODEL) as index:
        ids = index.write_batch(items)
        index.sync()
    with ImageIndex.open(tmp_path, MODEL) as index:
        assert index.path_of(ids[3]) == "/photos/3.png" and index.path_of(10_000) is None
        first = index.search(items[4].vector, k=5)[0]
        index.store.db.execute("UPDATE files SET path = '/moved/4.png' WHERE path = '/photos/4.png'")
        again = index.search(items[4].vector, k=5)[0]  # rows already read come from memory
        assert [h.path for h in again] == [h.path for h in first] and first[0].path == "/photos/4.png"
    with ImageIndex.open(tmp_path, MODEL) as index:  # a new opening reads the store as it is now
        assert index.search(items[4].vector, k=1)[0][0].path == "/moved/4.png"


def test_copies_share_an_item_and_removal_follows_the_last_copy(tmp_path):
    rng = np.random.default_rng(1)
    items = _items(rng, 5)
    with ImageIndex.open_for_writing(tmp_path, MODEL) as index:
        store = index.store
        store.write_batch(items)
        item_id = store.item_for_hash("hash2")
        store.write_batch(relinked=[("/backup/2.png", item_id, 102, 5)])  # a copy: no new vector
        assert store.count() == 5 and store.file_count() == 6
        assert store.remove_paths(["/photos/2.png"]) == 0  # the copy still holds the picture
        assert store.remove_paths(["/backup/2.png"]) == 1
        assert index.sync() == (4, 0)
        hits = index.search(items[2].vector, k=5)[0]
        assert "/photos/2.png" not in [h.path for h in hits] and len(hits) == 4


def test_hnsw_index_rebuilds_to_drop_removed_vectors(tmp_path):
    rng = np.random.default_rng(2)
    items = _items(rng, 200)
    with ImageIndex.open_for_writing(tmp_path, MODEL, factory="HNSW16,Flat") as index:
        index.write_batch(items)
        index.sync()
        index.remove_paths([i.path for i in items[:50]])
        assert index.sync() == (0, 50)
        assert index.searchable == 150
        assert index.manifest.factory == "HNSW16,Flat" and index.manifest.factory_chosen_by == "user"
        top = index.search(items[100].vector, k=1)[0][0]
        assert top.path == "/photos/100.png"


def test_ivf_pq_trains_on_the_stored_vectors(tmp_path):
    rng = np.random.default_rng(3)
    items = _items(rng, 2000)
    with ImageIndex.open_for_writing(tmp_path, MODEL, factory="IVF16,PQ4x4") as index:
        index.write_batch(items)
        index.sync()
        found = [index.search(items[i].vector, k=10)[0] for i in range(0, 2000, 100)]
    recall = np.mean([items[i * 100].path in [h.path for h in hits] for i, hits in enumerate(found)])
    assert recall >= 0.8


def test_other_models_are_refused(tmp_path):
    with ImageIndex.open_for_writing(tmp_path, MODEL) as index:
        index.write_batch(_items(np.random.default_rng(4), 3))
        index.sync()
    other = ModelIdentity(name="test", weights_hash="cd" * 16, dim=DIM)
    with pytest.raises(ModelMismatchError, match="built with model 'test'.*has changed since"):
        ImageIndex.open(tmp_path, other)
    with pytest.raises(ModelMismatchError):
        ImageIndex.open_for_writing(tmp_path, other)


def test_a_damaged_index_file_is_detected_and_rebuilt_by_a_writer(tmp_path):
    rng = np.random.default_rng(5)
    items = _items(rng, 50)
    with ImageIndex.open_for_writing(tmp_path, MODEL) as index:
        index.write_batch(items)
        index.sync()
    data = bytearray((tmp_path / INDEX_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / INDEX_FILE).write_bytes(bytes(data))
    with pytest.raises(IndexCorruptedError, match="mmodal index --index"):
        ImageIndex.open(tmp_path)
    with ImageIndex.open_for_writing(tmp_path, MODEL) as index:
        index.sync()
    with ImageIndex.open(tmp_path) as index:
        assert index.search(items[9].vector, k=1)[0][0].path == "/photos/9.png"


def _built(folder, rng, n=40):
    items = _items(rng, n)
    with ImageIndex.open_for_writing(folder, MODEL) as index:
        index.write_batch(items)
        index.sync()
    return items


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "emptied", "not-an-object"])
def test_a_damaged_manifest_is_named_and_rewritten_from_the_store(tmp_path, damage):
    items = _built(tmp_path, np.random.default_rng(8))
    path = tmp_path / MANIFEST_FILE
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 3]
    elif damage == "bit-flipped":
        data[data.index(b'"model"') + 1] ^= 0x40  # the key no longer says "model"
    elif damage == "emptied":
        data = bytearray()
    else:
        data = bytearray(b"[1, 2, 3]")
    path.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptedError, match=f"{MANIFEST_FILE} is damaged.*mmodal index --index"):
        ImageIndex.open(tmp_path)
    with ImageIndex.open_for_writing(tmp_path, MODEL) as index:
        assert index.manifest.model == MODEL
        index.sync()
    with ImageIndex.open(tmp_path) as index:
        assert index.searchable == len(items)
        assert index.search(items[7].vector, k=1)[0][0].path == "/photos/7.png"
    other = dataclasses.replace(MODEL, weights_hash="cd" * 16)
    path.write_bytes(b"{")
    with pytest.raises(ModelMismatchError):  # the store's record still says which model made its vectors
        ImageIndex.open_for_writing(tmp_path, other)


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_damaged_metadata_store_is_named_with_a_way_to_recover_and_left_alone(tmp_path, damage):
    _built(tmp_path, np.random.default_rng(9), n=400)
    with sqlite3.connect(tmp_path / METADATA_FILE) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything into the main file, as after a clean close
    path = tmp_path / METADATA_FILE
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[4096 * 3 : 4096 * 3 + 512] = bytes(512)  # a page of the items table zeroed, as a bad sector would
    path.write_bytes(bytes(data))
    for opening in (lambda: ImageIndex.open(tmp_path), lambda: ImageIndex.open_for_writing(tmp_path, MODEL)):
        with pytest.raises(IndexCorruptedError, match=f"{METADATA_FILE} is damaged.*\\.recover"):
            opening()
    assert path.read_bytes() == bytes(data)  # never silently emptied or rewritten


def test_a_store_ahead_of_the_index_file_is_caught_up(tmp_path):
    """What a crash between committing a batch and saving the FAISS file leaves behind."""
    rng = np.random.default_rng(6)
    with ImageIndex.open_for_writing(tmp_path, MODEL) as index:
        index.write_batch(_items(rng, 10))
        index.sync()
        index.write_batch(_items(rng, 10, start=10))  # no sync: the "crash"
    with ImageIndex.open(tmp_path) as index:
        assert index.searchable == 10 and index.count() == 20
    with ImageIndex.open_for_writing(tmp_path, MODEL) as index:
        assert index.sync() == (10, 0)
    assert Manifest.load(tmp_path).count == 20


def test_one_writer_at_a_time_and_a_clear_message_for_a_missing_index(tmp_path):
    with ImageIndex.open_for_writing(tmp_path, MODEL):
        with pytest.raises(IndexBusyError, match="another mmodal process"):
            ImageIndex.open_for_writing(tmp_path, MODEL)
    with pytest.raises(IndexNotFoundError, match="mmodal index PATH"):
        ImageIndex.open(tmp_path / "nothing")


def test_near_duplicates_are_grouped(tmp_path):
    rng = np.random.default_rng(7)
    items = _items(rng, 20)
    twin = items[3].vector + 0.01 * _unit(rng, 1)[0]
    items.append(NewItem("/photos/3-small.jpg", "hash-twin", 10, 1, 32, 24, "JPEG", twin / np.linalg.norm(twin)))
    with ImageIndex.open_for_writing(tmp_path, MODEL) as index:
        index.write_batch(items)
        index.sync()
        groups = index.near_duplicates(threshold=0.98)
    assert [[p for item in g for p in item.paths] for g in groups] == [["/photos/3.png", "/photos/3-small.jpg"]]


SLOT_DIM = 8
SLOT_MODEL = ModelIdentity(name="test", weights_hash="ab" * 16, dim=DIM, slot_dim=SLOT_DIM)


def _slotted(rng, counts):
    """Items whose slots have the given row counts (None: stored without slots)."""
    return [
        dataclasses.replace(item, slots=None if n is None else rng.normal(size=(n, SLOT_DIM)).astype(np.float32) * 3)
        for item, n in zip(_items(rng, len(counts)), counts)
    ]


def test_slots_round_trip_through_the_folder_in_float16(tmp_path):
    rng = np.random.default_rng(8)
    items = _slotted(rng, [3, 0, None, 16, 1])
    with ImageIndex.open_for_writing(tmp_path, SLOT_MODEL) as index:
        ids = index.write_batch(items)
        index.sync()
    with ImageIndex.open(tmp_path, SLOT_MODEL) as index:
        slots = index.slots_for([*ids, 10_000])  # an unknown id is left out
    assert sorted(slots) == sorted(ids)
    for item_id, item in zip(ids, items):
        got = slots[item_id]
        want = np.zeros((0, SLOT_DIM), np.float32) if item.slots is None else item.slots
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    assert [slots[i].shape[0] for i in ids] == [3, 0, 0, 16, 1]


def test_slots_that_do_not_fit_the_index_are_refused_whole(tmp_path):
    rng = np.random.default_rng(9)
    with ImageIndex.open_for_writing(tmp_path, SLOT_MODEL) as index:
        too_wide, too_many, flat, too_big = np.ones((2, 9)), np.ones((17, 8)), np.ones(8), np.full((1, 8), 1e6)
        for bad in (too_wide, too_many, flat, too_big):
            items = _slotted(rng, [1])
            with pytest.raises(ValueError, match="slots"):
                index.write_batch([*items, dataclasses.replace(items[0], content_hash="bad", slots=bad)])
        assert index.count() == 0  # the whole batch rolled back each time


def test_a_copy_shares_its_items_slots(tmp_path):
    rng = np.random.default_rng(10)
    original = _slotted(rng, [4])[0]
    # the same content found again under another path, encoded again (slightly differently): it joins the item
    again = dataclasses.replace(original, path="/backup/0.png", slots=original.slots[:2] + 1)
    with ImageIndex.open_for_writing(tmp_path, SLOT_MODEL) as index:
        (item_id,) = index.write_batch([original])
        assert index.write_batch([again]) == []
        moved_id = index.store.item_for_hash(original.content_hash)
        index.write_batch(relinked=[("/moved/0.png", moved_id, original.size, 7)])
        index.remove_paths([original.path])
        index.sync()
    with ImageIndex.open(tmp_path) as index:
        (hit,) = index.search(original.vector, k=1)[0]
        assert hit.item.id == item_id and hit.item.paths == ["/backup/0.png", "/moved/0.png"]
        slots = index.slots_for([hit.item.id])
    assert list(slots) == [item_id]
    np.testing.assert_allclose(slots[item_id], original.slots, rtol=1e-3, atol=1e-3)


def test_an_index_from_before_slots_is_refused_with_a_way_forward(tmp_path):
    with ImageIndex.open_for_writing(tmp_path, MODEL) as index:
        index.write_batch(_items(np.random.default_rng(11), 3))
        index.sync()
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    manifest["format_version"] = 1
    del manifest["model"]["slot_dim"]  # as the old code wrote it
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    # twice for writing: a refused writer lets go of the lock, so the second is refused for the format too
    for open_it in (ImageIndex.open, ImageIndex.open_for_writing, ImageIndex.open_for_writing):
        with pytest.raises(IndexCorruptedError, match="has format 1.*re-index the collection into a new folder"):
            open_it(tmp_path, MODEL)


def test_an_old_metadata_store_without_slots_is_refused(tmp_path):
    db = sqlite3.connect(tmp_path / METADATA_FILE)
    db.executescript(SCHEMA.replace(",\n    slots BLOB", ""))
    db.close()
    with pytest.raises(IndexCorruptedError, match="re-index the collection into a new folder"):
        MetadataStore(tmp_path / METADATA_FILE, DIM, SLOT_DIM)


def test_a_model_writing_other_slots_is_refused_by_name(tmp_path):
    with ImageIndex.open_for_writing(tmp_path, MODEL):
        pass
    with pytest.raises(ModelMismatchError, match="no object slots.* but the model in use is .*8-d object slots"):
        ImageIndex.open(tmp_path, SLOT_MODEL)
