"""The ``mmodal`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from mmodal import __version__

log = logging.getLogger("mmodal")

EXIT_USAGE = 2
EXIT_FAILURE = 1


def _data_shapes(args: argparse.Namespace) -> int:
    from mmodal.shapes.generate import generate_shapes

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


def _train(args: argparse.Namespace) -> int:
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


def _eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from mmodal.data.dataset import read_dataset
    from mmodal.evaluate import evaluate, format_report
    from mmodal.model import MModalModel
    from mmodal.shapes.generate import generate_shapes

    data = Path(args.data) if args.data else Path("data") / f"shapes-test-n{args.n}-seed{args.seed}"
    if not (data / "dataset.json").is_file():
        if args.data:
            raise FileNotFoundError(f"{data} holds no dataset; leave out --data to generate a test split")
        generate_shapes(data, n=args.n, seed=args.seed, split="test", with_speech=True)
    dataset = read_dataset(data)
    report = {}
    for name in args.model:
        model = MModalModel.from_pretrained(name)
        report[name] = evaluate(model, dataset)
    if args.json:
        print(json.dumps(report if len(report) > 1 else report[args.model[0]], indent=2))
    else:
        print(format_report(report))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmodal", description="Offline multimodal search and visual QA.")
    parser.add_argument("--version", action="version", version=f"mmodal {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = commands.add_parser("data", help="generate or convert datasets")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATASET")
    shapes = data_commands.add_parser("shapes", help="generate a Shapes world dataset (images, texts, speech)")
    shapes.add_argument("--out", required=True, help="folder to write")
    shapes.add_argument("--n", type=_positive_int, default=1000, help="number of images (default 1000)")
    shapes.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    shapes.add_argument(
        "--split", choices=("train", "test"), default="train", help="train never shows the held-out colour-shape pairs"
    )
    shapes.add_argument("--speech", action="store_true", help="also speak every query to a WAV (needs espeak-ng)")
    shapes.add_argument(
        "--queries",
        type=_positive_int,
        default=None,
        help="number of distinct search queries (default: n/2, at most 2000)",
    )
    shapes.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: all cores)")
    shapes.set_defaults(handler=_data_shapes)

    train = commands.add_parser("train", help="train a model on the Shapes world (resumable)")
    train.add_argument("--config", help="JSON file of training settings (mmodal.training.config.TrainConfig)")
    train.add_argument("--out", help="run folder (checkpoints and the final model in OUT/model)")
    train.add_argument("--data", help="training split folder; generated when missing")
    train.add_argument(
        "--n-images", dest="n_images", type=_positive_int, help="images to generate when --data is missing"
    )
    train.add_argument("--steps", type=_positive_int)
    train.add_argument("--batch-size", dest="batch_size", type=_positive_int)
    train.add_argument("--lr", type=float)
    train.add_argument("--recipe", choices=("full", "clip"), help="full (default) or the plain-InfoNCE CLIP baseline")
    train.add_argument("--model", choices=("default", "tiny"), help="model size")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"))
    train.add_argument("--seed", type=int)
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    train.add_argument(
        "--for-steps",
        dest="for_steps",
        type=_positive_int,
        help="stop after this many steps at a checkpoint (continue later with --resume)",
    )
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("eval", help="score models on a Shapes test split (P@10, mAP, foils, speech)")
    evaluate.add_argument("--model", nargs="+", required=True, help="model folder(s); several are scored side by side")
    evaluate.add_argument("--data", help="test split folder (default: generate one with --n and --seed)")
    evaluate.add_argument("--n", type=_positive_int, default=1000, help="images in a generated test split")
    evaluate.add_argument("--seed", type=int, default=4242, help="seed of a generated test split (not a training seed)")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(handler=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except KeyboardInterrupt:
        log.error("interrupted; rerun the same command to start again")
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        log.error("%s", e)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
