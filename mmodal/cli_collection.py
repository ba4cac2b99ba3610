"""The commands over a user's images: `mmodal index`, `mmodal search`, `mmodal dedup` and `mmodal info` on an
index, and `mmodal ask` about one image."""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("mmodal")  # every command's messages read "mmodal: …", as main() formats them


def index_command(args: argparse.Namespace) -> int:
    import json

    from mmodal.loading import index_model_name, load_model
    from mmodal.pipeline import index_collection

    model = load_model(args.model or index_model_name(args.index), allow_download=args.allow_download)
    summary = index_collection(
        model,
        args.paths,
        args.index,
        batch_size=args.batch_size,
        workers=args.workers,
        factory=args.factory,
        engine=args.engine,
        ray_address=args.address,
        shards=args.shards,
    )
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.format())
    return 0


def _open_searcher(args: argparse.Namespace):
    from mmodal.search import Searcher

    return Searcher.open(args.index, args.model, allow_download=args.allow_download)


def search_command(args: argparse.Namespace) -> int:
    import json

    from mmodal.data.audio import read_audio
    from mmodal.search import EmptyQueryError, Query

    query = Query(
        text=args.text,
        image=args.image,
        audio=read_audio(args.audio) if args.audio else None,
        negative=tuple(args.negative or ()),
    )
    if query.empty:
        raise EmptyQueryError("give a text, an image (--image) or a voice clip (--audio) to search for")
    report = _open_searcher(args).report(query, k=args.k, rerank=args.rerank)
    results = report.results
    if args.json:
        # A spoken query reports what was heard, and a query with words the model cannot read names them, beside
        # the hits; any other query prints the hits alone (and what there is to say goes to the log).
        if report.transcript is not None or report.unknown_words:
            print(
                json.dumps({k: v for k, v in report.to_dict().items() if k != "offset"}, indent=2, ensure_ascii=False)
            )
        else:
            _log_messages(report.messages)
            print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
        return 0
    if report.transcript is not None:
        print(report.transcript.summary())
    _log_messages(report.messages)
    if not results and not report.unknown_words:
        print("no results: the index is empty")
    for rank, r in enumerate(results, 1):
        rerank = "" if r.rerank_score is None else f"  match {r.rerank_score:.3f}"
        print(f"{rank:>3}  {r.embedding_score:+.3f}{rerank}  {r.path}")
    return 0


def _log_messages(messages) -> None:
    for message in messages:
        log.warning("%s", message)


def ask_command(args: argparse.Namespace) -> int:
    import json

    from mmodal.data.images import ImageSkipped, read_image
    from mmodal.explain import save_answer_picture
    from mmodal.loading import load_model

    try:
        image = read_image(args.image).image
    except ImageSkipped as skipped:
        raise ValueError(f"cannot answer about {args.image}: {skipped.reason}") from None
    model = load_model(args.model, allow_download=args.allow_download)
    answer = model.ask([image], [args.question], alternatives=args.alternatives)[0]
    if args.explain:
        save_answer_picture(image, answer, args.explain)
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False))
    else:
        others = ", ".join(f"{a} ({c:.0%})" for a, c in answer.alternatives)
        print(
            f"{answer.answer}  (confidence {answer.confidence:.0%})" + (f"; other answers: {others}" if others else "")
        )
        if answer.note:
            log.warning("%s", answer.note)
    if args.explain:
        print(f"answer map written to {args.explain}", file=sys.stderr)
    return 0


def dedup_command(args: argparse.Namespace) -> int:
    import json

    from mmodal.indexes.folders import open_index

    with open_index(args.index) as index:
        groups = index.near_duplicates(args.threshold)
    if args.json:
        print(json.dumps([[p for item in group for p in item.paths] for group in groups], indent=2))
        return 0
    for group in groups:
        print("\n".join(p for item in group for p in item.paths) + "\n")
    print(f"{len(groups)} groups of near-duplicates (cosine similarity ≥ {args.threshold})")
    return 0


def info_command(args: argparse.Namespace) -> int:
    import json

    from mmodal.indexes.folders import open_index

    with open_index(args.index) as index:
        stats = index.stats()
        if args.skipped:
            stats["skipped_files"] = [{"path": p, "reason": r} for p, r in index.skipped()]
    if args.json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
        return 0
    for key, value in stats.items():
        if key != "skipped_files":
            print(f"{key:>18}: {value}")
    for entry in stats.get("skipped_files", []):
        print(f"  skipped {entry['path']}: {entry['reason']}")
    return 0
