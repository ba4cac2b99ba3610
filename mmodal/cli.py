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
