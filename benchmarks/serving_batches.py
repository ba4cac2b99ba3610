"""Model time per request as a server's worker spends it (one torch thread), alone and in batches: re-ranked
text searches (`Searcher.report_many`) and questions (`answer_requests`), with a check that batches answer as
requests alone do.

    python benchmarks/serving_batches.py SHAPES_DIR INDEX_DIR [--sizes 1 2 4 8]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mmodal.app.model_pool import AskRequest, answer_requests
from mmodal.data.dataset import read_dataset
from mmodal.indexes.folders import open_index
from mmodal.loading import load_model
from mmodal.search import Query, Searcher


def per_request_ms(run, items: list, size: int) -> tuple[float, list]:
    run(items[:size])  # warm
    started, out = time.perf_counter(), []
    for i in range(0, len(items) - len(items) % size, size):
        out += run(items[i : i + size])
    return 1000 * (time.perf_counter() - started) / len(out), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shapes_dir")
    parser.add_argument("index_dir")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--n", type=int, default=64, help="requests of each kind")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = read_dataset(args.shapes_dir)
    model = load_model("shapes")
    searcher = Searcher(model, open_index(args.index_dir))
    files = {r.id: str(dataset.root / r.file) for r in dataset.images}
    queries = [Query(text=q.text) for q in dataset.queries][: args.n]
    questions = [AskRequest(files[q.image_id], "x", q.question, 3) for q in dataset.questions[: args.n]]

    def search(batch):
        return searcher.report_many(batch, k=12)

    def ask(batch):
        return answer_requests(model, batch)

    rows = []
    for kind, run, items in (("text search", search, queries), ("ask", ask, questions)):
        _, alone = per_request_ms(run, items, 1)
        for size in args.sizes:
            ms, out = per_request_ms(run, items, size)
            if kind == "ask":
                same = sum(a[0].answer == b[0].answer for a, b in zip(alone, out))
            else:
                same = sum([r.path for r in a.results] == [r.path for r in b.results] for a, b in zip(alone, out))
            rows.append({"kind": kind, "batch": size, "ms_per_request": round(ms, 1), "same_as_alone": same})
    print(json.dumps({"requests_per_kind": args.n, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
