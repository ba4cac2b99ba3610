"""Past one machine: the Ray engine indexes a folder as the local pipeline does, and distributed training
sees the global batch."""

from __future__ import annotations

import numpy as np
import pytest

from indexes.collection import ImageIndex
from mmodal.pipeline import index_collection


@pytest.mark.slow
def test_ray_engine_indexes_a_folder_as_the_local_pipeline_does(model, shapes_test_dir, tmp_path):
    ray = pytest.importorskip("ray", reason="the Ray engine is the optional extra mmodal[scale]")
    folder = shapes_test_dir / "images"
    local = index_collection(model, [folder], tmp_path / "local", show_progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = index_collection(model, [folder], tmp_path / "ray", show_progress=False, engine="ray")
    finally:
        ray.shutdown()
    assert on_ray.indexed == local.indexed > 0 and on_ray.skipped == local.skipped
    assert not (tmp_path / "ray" / ".ray-shards").exists()  # the embedding shards go once they are in the index
    with ImageIndex.open(tmp_path / "local") as a, ImageIndex.open(tmp_path / "ray") as b:
        probe = np.ones((1, a.manifest.model.dim), np.float32)
        ids = {p: h.item.id for h in a.search(probe, a.count())[0] for p in h.item.paths}
        assert len(ids) == a.count() + on_ray.relinked
        assert ids == {p: h.item.id for h in b.search(probe, b.count())[0] for p in h.item.paths}
        item_ids = sorted(set(ids.values()))
        vectors_a, vectors_b = a.vectors_for(item_ids), b.vectors_for(item_ids)
        slots_a, slots_b = a.slots_for(item_ids), b.slots_for(item_ids)
        for i in item_ids:
            np.testing.assert_allclose(vectors_b[i], vectors_a[i], atol=1e-5)
            np.testing.assert_allclose(slots_b[i], slots_a[i], atol=1e-3)
        query = vectors_a[item_ids[0]][None]
        assert [h.path for h in a.search(query, 10)[0]] == [h.path for h in b.search(query, 10)[0]]
