"""Real photos, offline: index the sample photos that ship with scikit-image and scikit-learn with a model and
count the one-object queries whose photo ranks first (mmodal.data.sample_photos lists both).

    python benchmarks/photos.py [--model photos] [--model clip:PATH ...]
"""

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from mmodal.data.sample_photos import SAMPLE_PHOTO_QUERIES, sample_photo_paths
from mmodal.indexes.folders import open_index
from mmodal.loading import load_model
from mmodal.pipeline import index_collection
from mmodal.search import Query, Searcher


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for path in sample_photo_paths():
            shutil.copy(path, photos / path.name)
        for name in args.model or ["photos"]:
            model = load_model(name)
            folder = Path(tmp) / f"index-{abs(hash(name))}"
            summary = index_collection(model, [photos], folder, show_progress=False)
            index = open_index(folder, model=model.identity)
            searcher = Searcher(model, index)
            found = 0
            print(f"## {name}: {summary.indexed} photos indexed")
            for query, file in SAMPLE_PHOTO_QUERIES.items():
                ranked = [Path(r.path).name for r in searcher.search(Query(text=query), k=3)]
                found += ranked[0] == file
                print(f"{'found ' if ranked[0] == file else 'missed'} {query!r:34} → {', '.join(ranked)}")
            print(f"first for {found} of {len(SAMPLE_PHOTO_QUERIES)} queries ({found / len(SAMPLE_PHOTO_QUERIES):.0%})")
            index.close()


if __name__ == "__main__":
    main()
