"""The ``mmodal`` command line: its arguments, and running the command they name (the commands themselves are
in :mod:`mmodal.cli_training` and :mod:`mmodal.cli_collection`; others come through entry points)."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path

from mmodal import __version__
from mmodal.cli_collection import ask_command, dedup_command, index_command, info_command, search_command
from mmodal.cli_training import data_shapes_command, eval_command, train_command

log = logging.getLogger("mmodal")

EXIT_USAGE = 2
EXIT_FAILURE = 1
COMMANDS_GROUP = "mmodal.commands"  # entry points that add commands, e.g. `serve` from the app package


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
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
    shapes.set_defaults(handler=data_shapes_command)

    from mmodal.training.config import RECIPES, SPEECH_EXTRAS

    train = commands.add_parser("train", help="train a model on the Shapes world (resumable)")
    train.add_argument("--config", help="JSON file of training settings (mmodal.training.config.TrainConfig)")
    train.add_argument("--out", help="run folder (checkpoints and the final model in OUT/model)")
    train.add_argument("--data", help="training split folder; generated when missing")
    train.add_argument(
        "--n-images", dest="n_images", type=_positive_int, help="images to generate when --data is missing"
    )
    train.add_argument("--speech-data", dest="speech_data", help="spoken train splits folder; generated when missing")
    for stage, what in (
        ("perception", "detector and crop classifier, on pixels"),
        ("reading", "the language half on noisy ground-truth slots"),
        ("joint", "the language half on the detector's own slots"),
        ("speech", "the audio tower"),
    ):
        train.add_argument(f"--{stage}-steps", dest=f"{stage}_steps", type=_count, help=f"{what}: steps (0 skips it)")
    train.add_argument(
        "--speech-extras",
        dest="speech_extras",
        nargs="*",
        choices=SPEECH_EXTRAS,
        help="what the speech stage adds to its probe (default: all)",
    )
    train.add_argument(
        "--speech-validation",
        dest="speech_validation",
        help="a spoken test split: the speech stage logs its word error rate every 100 steps (curve.jsonl)",
    )
    train.add_argument("--batch-size", dest="batch_size", type=_positive_int, help="every stage's batch")
    train.add_argument("--lr", type=float, help="every stage's peak learning rate")
    train.add_argument(
        "--recipe",
        choices=RECIPES,
        help="shapes (default): the whole model from nothing, in stages (perception, reading, joint, speech); "
        "language: the language half afresh over the perception of --init-from (default: the shipped model), so "
        "its indexes stay valid; speech: a fresh audio tower over --init-from",
    )
    train.add_argument(
        "--model", choices=("default", "tiny", "dense"), help="model size; dense: a dense core, the MoE's baseline"
    )
    train.add_argument("--device", choices=("auto", "cpu", "cuda"))
    train.add_argument("--seed", type=int)
    train.add_argument(
        "--init-from",
        dest="init_from",
        help="recipes language and speech: the trained model they build on (default: the shipped one)",
    )
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    train.add_argument(
        "--for-steps",
        dest="for_steps",
        type=_positive_int,
        help="stop after this many steps at a checkpoint (continue later with --resume)",
    )
    train.set_defaults(handler=train_command)

    evaluate = commands.add_parser("eval", help="score models on a Shapes test split (P@10, mAP, foils, speech)")
    evaluate.add_argument("--model", nargs="+", required=True, help="model folder(s); several are scored side by side")
    evaluate.add_argument("--data", help="test split folder (default: generate one with --n and --seed)")
    evaluate.add_argument("--n", type=_positive_int, default=1000, help="images in a generated test split")
    evaluate.add_argument("--seed", type=int, default=4242, help="seed of a generated test split (not a training seed)")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.add_argument(
        "--paraphrases",
        type=Path,
        help="also score a paraphrase set: a folder of search.tsv and questions.tsv (e.g. benchmarks/paraphrases)",
    )
    evaluate.set_defaults(handler=eval_command)

    index = commands.add_parser("index", help="add the images under folders to an index (resumable)")
    index.add_argument("paths", nargs="*", help="folders or image files (default: the folders indexed before)")
    index.add_argument("--index", required=True, help="index folder (created when missing)")
    _add_model_options(
        index,
        "shapes (default; the Shapes world), photos (real photos, offline), clip:PATH or clip:HUB_NAME (a CLIP "
        "or SigLIP model), swin:PATH (a timm classifier), or a model folder; default for an existing index: its model",
    )
    index.add_argument("--batch-size", dest="batch_size", type=_positive_int, default=64)
    index.add_argument("--workers", type=_positive_int, default=None, help="decoding processes (default: one per core)")
    index.add_argument(
        "--factory", help="FAISS factory string, e.g. Flat, HNSW32,Flat or IVF1024,PQ16 (default: chosen by size)"
    )
    index.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="where decoding and encoding run: local worker processes, or a Ray cluster (pip install 'mmodal[scale]')",
    )
    index.add_argument("--address", help="with --engine ray: the cluster to join (default: start Ray on this machine)")
    index.add_argument(
        "--shards",
        type=_positive_int,
        help="split a new index into this many shards by content hash (searched together; default: one index)",
    )
    index.add_argument("--json", action="store_true", help="print the summary as JSON")
    index.set_defaults(handler=index_command)

    search = commands.add_parser("search", help="search an index by text, example image or voice")
    search.add_argument("text", nargs="?", help='what to look for, e.g. "a red circle left of a blue square"')
    search.add_argument("--index", required=True, help="index folder")
    search.add_argument("--image", help="an example image: find similar ones (combines with text)")
    search.add_argument(
        "--audio",
        help="a spoken query (WAV, MP3, M4A/AAC, OGG/Opus, WebM, FLAC): searched by its transcript when the model "
        "hears the words, else by its sound",
    )
    search.add_argument(
        "--not", dest="negative", action="append", metavar="TEXT", help="push results away from this text (repeatable)"
    )
    search.add_argument("-k", type=_positive_int, default=10, help="number of results (default 10)")
    search.add_argument("--no-rerank", dest="rerank", action="store_false", help="rank by embedding similarity only")
    _add_model_options(search, "model name or folder (default: the model that built the index)")
    search.add_argument("--json", action="store_true", help='print [{"path", "score", ...}] as JSON')
    search.set_defaults(handler=search_command)

    ask = commands.add_parser("ask", help="answer a question about an image")
    ask.add_argument("image", help="image file")
    ask.add_argument("question", help='e.g. "what color is the large star?"')
    _add_model_options(ask, "model name or folder (default: shapes; photos only says what a photo shows)")
    ask.add_argument("--alternatives", type=int, default=3, help="other answers to list (default 3)")
    ask.add_argument("--explain", metavar="OUT.png", help="write the answer map: where the question looked")
    ask.add_argument("--json", action="store_true", help='print {"answer", "confidence", "alternatives"}')
    ask.set_defaults(handler=ask_command)

    dedup = commands.add_parser("dedup", help="list groups of near-duplicate images in an index")
    dedup.add_argument("--index", required=True, help="index folder")
    dedup.add_argument("--threshold", type=float, default=0.98, help="cosine similarity to call a pair duplicates")
    dedup.add_argument("--json", action="store_true", help="print the groups as JSON")
    dedup.set_defaults(handler=dedup_command)

    info = commands.add_parser("info", help="show an index's size, model and structure")
    info.add_argument("--index", required=True, help="index folder")
    info.add_argument("--skipped", action="store_true", help="also list every skipped file and why")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=info_command)

    for command in sorted(entry_points(group=COMMANDS_GROUP), key=lambda c: c.name):
        command.load()(commands)
    return parser


def _add_model_options(command: argparse.ArgumentParser, model_help: str) -> None:
    command.add_argument("--model", help=model_help)
    command.add_argument(
        "--allow-download", action="store_true", help="fetch a hub model missing from the local Hugging Face cache"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports which CPU build it picked
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the web app checks its own startup over HTTP
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except KeyboardInterrupt:
        log.error("interrupted; what was saved is kept: run the same command again to continue (add --resume to train)")
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        log.error("%s", e)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
