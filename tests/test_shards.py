"""Sharded indexes: images spread by content hash, and searching the shards together equals one exact index."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mmodal.indexes.collection import ImageIndex
from mmodal.indexes.errors import ModelMismatchError
from mmodal.indexes.folders import open_index
from mmodal.indexes.manifest import ModelIdentity
from mmodal.indexes.metadata import NewItem
from mmodal.indexes.shards import ShardedIndex, shard_folder, shard_of
from mmodal.pipeline import index_collection

DIM, SLOT_DIM = 16, 5
MODEL = ModelIdentity(name="test", weights_hash="cd" * 16, dim=DIM, slot_dim=SLOT_DIM)


def _items(n: int, seed: int = 0) -> list[NewItem]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        NewItem(
            f"/photos/{i:04d}.png",
            f"{rng.integers(2**62):016x}",
            100 + i,
            1_000 + i,
            64,
            48,
            "PNG",
            v,
            rng.normal(size=(int(rng.integers(0, 4)), SLOT_DIM)).astype(np.float32),
        )
        for i, v in enumerate(vectors)
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The same 400 images in one exact index and in two- and three-shard ones."""
    root = tmp_path_factory.mktemp("shards")
    items = _items(400)
    with ImageIndex.open_for_writing(root / "one", MODEL, factory="Flat") as whole:
        whole.write_batch(items)
        whole.sync()
    for n in (2, 3):
        with ShardedIndex.open_for_writing(root / f"sharded-{n}", MODEL, n, factory="Flat") as sharded:
            for start in range(0, len(items), 150):  # several batches, as indexing writes them
                sharded.write_batch(items[start : start + 150])
            sharded.sync()
    return root, items


@pytest.mark.parametrize("n_shards", [2, 3])
def test_shards_together_find_what_one_exact_index_finds(built, n_shards):
    root, items = built
    queries = np.random.default_rng(1).normal(size=(25, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    whole = ImageIndex.open(root / "one", MODEL)
    sharded = ShardedIndex.open(root / f"sharded-{n_shards}", MODEL)
    try:
        for k in (1, 10, 400):
            expected = whole.search(queries, k)
            found = sharded.search(queries, k)
            assert [[h.path for h in row] for row in found] == [[h.path for h in row] for row in expected]
            for row_found, row_expected in zip(found, expected):
                np.testing.assert_allclose([h.score for h in row_found], [h.score for h in row_expected], rtol=1e-6)
        assert sharded.count() == whole.count() == len(items)
    finally:
        whole.close()
        sharded.close()


def test_each_image_lies_in_the_shard_its_hash_picks(built):
    root, items = built
    sharded = ShardedIndex.open(root / "sharded-3", MODEL)
    try:
        counts = sharded.stats()["shard_images"]
        assert sum(counts) == len(items) and min(counts) > len(items) / 3 * 0.7  # spread about evenly
        for shard, index in enumerate(sharded.shards):
            held = {
                index.item_for_hash(item.content_hash) is not None
                for item in items
                if shard_of(item.content_hash, 3) == shard
            }
            assert held == {True}
        by_path = {item.path: item for item in items}
        hits = sharded.search(items[7].vector[None], 5)[0]
        assert hits[0].path == items[7].path
        slots = sharded.slots_for([h.item.id for h in hits])
        vectors = sharded.vectors_for([h.item.id for h in hits])
        for hit in hits:  # outside ids lead back to the right shard's rows
            np.testing.assert_allclose(slots[hit.item.id], by_path[hit.path].slots, rtol=1e-3, atol=1e-3)  # fp16
            np.testing.assert_array_equal(vectors[hit.item.id], by_path[hit.path].vector)
    finally:
        sharded.close()


def test_a_sharded_index_refuses_another_model_and_another_shard_count(built):
    root, _ = built
    other = ModelIdentity(name="other", weights_hash="ef" * 16, dim=DIM, slot_dim=SLOT_DIM)
    with pytest.raises(ModelMismatchError):
        ShardedIndex.open(root / "sharded-2", other)
    with pytest.raises(ValueError, match="number of shards is fixed"):
        ShardedIndex.open_for_writing(root / "sharded-2", MODEL, 4)
    assert shard_folder(root / "sharded-2", 1).is_dir()


def test_near_duplicates_across_shards_group_as_in_one_index(tmp_path):
    items = _items(120, seed=5)
    rng = np.random.default_rng(6)
    copies = []
    for item in items[:12]:  # re-encoded copies: other bytes, so another hash (and maybe another shard)
        vector = item.vector + rng.normal(scale=0.01, size=DIM).astype(np.float32)
        copies.append(
            replace(
                item,
                path=item.path + ".jpg",
                content_hash=f"{rng.integers(2**62):016x}",
                vector=vector / np.linalg.norm(vector),
            )
        )
    groups = {}
    for name, shards in (("one", None), ("sharded", 3)):
        with open_index(tmp_path / name, "w", MODEL, shards=shards, factory="Flat") as index:
            index.write_batch(items + copies)
            index.sync()
        with open_index(tmp_path / name, model=MODEL) as index:
            found = index.near_duplicates(0.98)
            groups[name] = sorted(sorted(p for info in group for p in info.paths) for group in found)
            assert index.path_of(index.search(items[0].vector[None], 1)[0][0].item.id) == items[0].path
    assert groups["sharded"] == groups["one"]
    assert sorted(groups["one"]) == sorted(sorted([item.path, item.path + ".jpg"]) for item in items[:12])


@pytest.mark.slow
def test_cli_indexes_and_searches_a_sharded_collection_as_one_index(shapes_test_dir, dataset, tmp_path, capsys):
    import json

    from mmodal.cli import main

    folder = str(shapes_test_dir / "images")
    assert main(["index", folder, "--index", str(tmp_path / "one"), "--json"]) == 0
    assert main(["index", folder, "--index", str(tmp_path / "sharded"), "--shards", "2", "--json"]) == 0
    capsys.readouterr()
    assert main(["index", "--index", str(tmp_path / "sharded"), "--json"]) == 0  # again: nothing new
    assert json.loads(capsys.readouterr().out)["unchanged"] == len(dataset.images)
    for query in [q.text for q in dataset.queries[:5]]:
        found = {}
        for name in ("one", "sharded"):
            assert main(["search", query, "--index", str(tmp_path / name), "--json", "-k", "8"]) == 0
            found[name] = [(r["path"], round(r["score"], 4)) for r in json.loads(capsys.readouterr().out)]
        assert found["sharded"] == found["one"] and len(found["one"]) == 8
    # Inspected and de-duplicated by the same commands as one index.
    reports = {}
    for name in ("one", "sharded"):
        assert main(["info", "--index", str(tmp_path / name), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert main(["dedup", "--index", str(tmp_path / name), "--threshold", "0.97", "--json"]) == 0
        reports[name] = info, sorted(sorted(group) for group in json.loads(capsys.readouterr().out))
    (one, one_groups), (sharded, sharded_groups) = reports["one"], reports["sharded"]
    assert sharded["shards"] == 2 and sum(sharded["shard_images"]) == sharded["images"] == one["images"]
    assert sharded["searchable"] == one["searchable"] == len(dataset.images)
    assert sharded["roots"] == one["roots"] and sharded["model"] == one["model"]
    assert sharded_groups == one_groups and one_groups  # the test split repeats some scenes closely


@pytest.mark.slow
def test_the_web_app_serves_a_sharded_index_and_adds_folders_to_it(model, dataset, tmp_path):
    from gradio_client import Client

    from mmodal.app.server import Collection, ServeOptions, launch
    from mmodal.search import Query
    from tests.conftest import free_port

    images = sorted((dataset.root / "images").iterdir())
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, part in ((first, images[:50]), (second, images[50:])):
        folder.mkdir()
        for path in part:
            (folder / path.name).symlink_to(path)
    index_collection(model, [first], tmp_path / "sharded", workers=1, show_progress=False, shards=3)
    collection = Collection.open(tmp_path / "sharded")  # as `mmodal serve --index` opens it
    app, url = launch(collection, ServeOptions(port=free_port(), allow_indexing=True), block=False)
    try:
        client = Client(url, verbose=False)
        query = dataset.queries[0].text
        gallery, rows, _heard, _note = client.predict(query, None, None, "", 5, True, api_name="/search")
        expected = collection.searcher().search(Query(text=query), k=5, rerank=True)
        assert [row["file"] for row in rows] == [r.path for r in expected] and len(rows) == 5
        collection.add(str(second))  # what the Index tab calls
        stats = collection.stats()
        assert stats["shards"] == 3 and stats["files"] == len(images)
        assert not (tmp_path / "sharded" / "manifest.json").exists()  # still sharded, not one index inside it
        # The model's workers reopen the index after the run: the page now finds pictures of the added folder.
        _, rows, _heard, _note = client.predict(query, None, None, "", 100, False, api_name="/search")
        assert len(rows) == len(images) and any(Path(row["file"]).parent == second for row in rows)
    finally:
        app.close()
        collection.close()
