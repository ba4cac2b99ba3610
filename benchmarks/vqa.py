"""VQA exact match side by side: models given as FOLDER, or FOLDER:blind for a question-only model (every
image blanked, as it was trained).

    python benchmarks/vqa.py --data data/shapes-test-n1000-seed4242 --questions 1000 \
        --model runs/vqa-moe/model runs/vqa-dense/model runs/vqa-blind/model:blind
"""

from __future__ import annotations

import argparse
import json
import time

from mmodal.data.dataset import read_dataset
from mmodal.evaluate_questions import evaluate_vqa
from mmodal.model import MModalModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", required=True)
    parser.add_argument("--data", required=True, help="a Shapes test split (mmodal data shapes --split test)")
    parser.add_argument("--questions", type=int, default=1000, help="questions, spread evenly over the split")
    args = parser.parse_args()
    dataset = read_dataset(args.data)
    for spec in args.model:
        folder, _, mode = spec.partition(":")
        model = MModalModel.from_pretrained(folder).eval()
        started = time.perf_counter()
        report = evaluate_vqa(model, dataset, max_questions=args.questions, blind=mode == "blind")
        seen = report.get("seen", {})
        print(
            json.dumps(
                {
                    "model": spec,
                    "core": "dense" if model.config.text.n_routed_experts == 0 else "moe",
                    "accuracy": report["all"]["accuracy"],
                    "held_out": report.get("held_out_all", {}).get("accuracy"),
                    "by_type": {t: v["accuracy"] for t, v in report["by_type"].items()},
                    "ece": report["ece"],
                    "kept_by_confidence": report["kept_by_confidence"],
                    "seen_by_type": {t: v["accuracy"] for t, v in seen.items()},
                    "held_out_by_type": {t: v["accuracy"] for t, v in report.get("held_out", {}).items()},
                    "questions": report["all"]["n"],
                    "seconds": round(time.perf_counter() - started, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
