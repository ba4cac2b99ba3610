"""Search quality over a large rendered gallery: P@10 and mAP per query kind and per phrase structure, through the
same index and Searcher that `mmodal search` uses (``mmodal.evaluate``), with the foils and questions left out
(they measure the model, not the gallery's size; `mmodal eval` scores them on the 1,000-image split).

    python benchmarks/quality_at_scale.py --model shapes --data data/test-n100000 --n 100000 --seed 4343

The test split is generated first when the folder holds none (2,000 queries drawn over every structure).
Prints JSON: the search report and the time each part took (the reasoner on ground-truth slots, which
`mmodal eval` also reports, is left out: it decides every query over every image).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from mmodal.data.dataset import read_dataset
from mmodal.data.generate import generate_shapes
from mmodal.evaluate import evaluate
from mmodal.model import MModalModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--data", default="data/test-n100000")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=4343)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--out", help="also write the JSON report here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    if not (Path(args.data) / "dataset.json").is_file():
        generate_shapes(args.data, n=args.n, seed=args.seed, split="test", n_queries=args.queries)
    generated = time.perf_counter()
    dataset = replace(read_dataset(args.data), foils=[], questions=[])
    model = MModalModel.from_pretrained(args.model)
    report = evaluate(model, dataset, ground_truth=False)
    report.pop("moe", None)
    structures = report["search"]["reranked_by_structure"]
    report["summary"] = {
        "images": len(dataset.images),
        "queries": len(dataset.queries),
        "reranked_p@10": report["search"]["reranked"]["all"]["p@10"],
        "structures": len(structures),
        "structures_under_0.95": sorted(s for s, v in structures.items() if v["p@10"] < 0.95),
        "lowest_structure": min(structures.items(), key=lambda item: item[1]["p@10"]),
        "minutes_to_generate": round((generated - started) / 60, 1),
        "minutes_to_evaluate": round((time.perf_counter() - generated) / 60, 1),
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
