"""The commands that make and score models: `mmodal data shapes` (a Shapes world dataset), `mmodal train` and
`mmodal eval`."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("mmodal")  # every command's messages read "mmodal: …", as main() formats them


def data_shapes_command(args: argparse.Namespace) -> int:
    from mmodal.data.generate import generate_shapes

    dataset = generate_shapes(
        args.out,
        n=args.n,
        seed=args.seed,
        split=args.split,
        with_speech=args.speech,
        n_queries=args.queries,
        workers=args.workers,
    )
    counts = dataset.info["counts"]
    print(
        f"wrote {counts['images']} images, {counts['captions']} captions, {counts['foils']} foils, "
        f"{counts['questions']} questions and {counts['queries']} queries"
        + (" with speech" if args.speech else "")
        + f" to {dataset.root.resolve()}"
    )
    return 0


def train_command(args: argparse.Namespace) -> int:
    from dataclasses import fields, replace
    from pathlib import Path

    from mmodal.training.config import TrainConfig
    from mmodal.training.loop import train

    config = TrainConfig.load(args.config) if args.config else TrainConfig()
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    config = replace(config, **overrides)
    folder = train(config, resume=args.resume, for_steps=args.for_steps)
    if folder is None:
        print(f"checkpoint saved in {Path(config.out).resolve()}; run again with --resume to continue")
    else:
        print(f"model written to {folder.resolve()}")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from mmodal.data.dataset import read_dataset
    from mmodal.data.generate import QUERY_DRAW, generate_shapes
    from mmodal.evaluate import evaluate
    from mmodal.evaluate_report import format_report
    from mmodal.model import MModalModel

    data = Path(args.data) if args.data else Path("data") / f"shapes-test-n{args.n}-seed{args.seed}"
    if not (data / "dataset.json").is_file():
        if args.data:
            raise FileNotFoundError(f"{data} holds no dataset; leave out --data to generate a test split")
        generate_shapes(data, n=args.n, seed=args.seed, split="test", with_speech=True)
    dataset = read_dataset(data)
    if not args.data and dataset.info.get("query_draw") != QUERY_DRAW:
        log.info("%s was drawn by an earlier query generator: drawing it again", data)
        dataset = generate_shapes(data, n=args.n, seed=args.seed, split="test", with_speech=True)
    report = {}
    for name in args.model:
        model = MModalModel.from_pretrained(name)
        report[name] = evaluate(model, dataset, paraphrases=args.paraphrases)
    if args.json:
        print(json.dumps(report if len(report) > 1 else report[args.model[0]], indent=2))
    else:
        print(format_report(report))
    return 0
