"""kill -9 the indexer at many moments; after each, the same command again must leave the index whole.

    python -m reliability.crashes --images 2000 --trials 20 --out runs/crashes

Indexes a generated Shapes collection once without interruption (the reference). Then, per trial, starts
`mmodal index` on a fresh folder and kills it with SIGKILL: while the FAISS file is being written, while a
SQLite transaction commits, or at a random moment of the run. After each kill the same command runs to the
end, and the index must open, hold every image once (no duplicate, no loss) and give the reference's
search results. Prints the tally as JSON.

The two aimed moments are reached by running the indexer through this module (``--child MOMENT``), which
wraps the FAISS writer or the SQLite commit so that the process kills itself there, as a power cut would.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

AIMED = ("faiss-save", "sqlite-commit")
RUN_SECONDS = 1800
RANDOM_TRIES = 4


def _install_fault(moment: str, rng: random.Random) -> None:
    """Makes this process kill itself, SIGKILL, at ``moment``."""

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if moment == "faiss-save":
        import faiss

        write_index = faiss.write_index

        def half_written(index, path):  # the file half on disk, the rename never done
            write_index(index, path)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            die()

        faiss.write_index = half_written
    elif moment == "sqlite-commit":
        from mmodal.indexes import metadata

        commits = {"n": 0, "fatal": rng.randint(1, 4)}
        leave = metadata._Transaction.__exit__

        def committing(self, kind, value, traceback):
            commits["n"] += 1
            if commits["n"] == commits["fatal"]:  # dies a few microseconds into the COMMIT
                threading.Timer(rng.uniform(0, 0.002), die).start()
            return leave(self, kind, value, traceback)

        metadata._Transaction.__exit__ = committing
    else:
        raise ValueError(f"unknown moment {moment!r}; choose from {AIMED}")


def _child(moment: str, seed: int, argv: list[str]) -> int:
    _install_fault(moment, random.Random(seed))
    from mmodal.cli import main

    return main(argv)


def _index(images: Path, index_dir: Path, moment: str | None = None, seed: int = 0) -> subprocess.Popen:
    args = ["index", str(images), "--index", str(index_dir), "--batch-size", "32"]
    prefix = (
        ["-m", "reliability.crashes", "--child", moment, "--seed", str(seed), "--"]
        if moment
        else [
            "-m",
            "mmodal.cli",
        ]
    )
    return subprocess.Popen(
        [sys.executable, *prefix, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _committed(index_dir: Path) -> int:
    try:
        with sqlite3.connect(index_dir / "metadata.sqlite") as db:
            return db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    except sqlite3.Error:
        return 0


def check_index(index_dir: Path, reference: dict, queries: list[str], model) -> list[str]:
    """What is wrong with the index in ``index_dir`` against the reference run (nothing: [])."""
    from mmodal.indexes.folders import open_index
    from mmodal.search import Query, Searcher

    problems = []
    with sqlite3.connect(index_dir / "metadata.sqlite") as db:
        items, hashes = db.execute("SELECT COUNT(*), COUNT(DISTINCT content_hash) FROM items").fetchone()
        files, paths = db.execute("SELECT COUNT(*), COUNT(DISTINCT path) FROM files").fetchone()
    if items != hashes or files != paths:
        problems.append(f"duplicates: {items} items for {hashes} contents, {files} file rows for {paths} paths")
    if items != reference["count"]:
        problems.append(f"{items} images stored, the reference run stored {reference['count']}")
    with open_index(index_dir) as index:
        if index.index.ntotal != items:
            problems.append(f"the FAISS file holds {index.index.ntotal} vectors for {items} stored images")
        results = _results(Searcher(model, index), queries, Query)
    for query, got, expected in zip(queries, results, reference["results"]):
        if [p for p, _ in got] != [p for p, _ in expected] or any(
            abs(a - b) > 1e-3 for (_, a), (_, b) in zip(got, expected)
        ):
            problems.append(f"{query!r}: results differ from the reference run")
    return problems


def _results(searcher, queries: list[str], query_type) -> list[list[tuple[str, float]]]:
    return [[(r.path, r.score) for r in searcher.search(query_type(text=q), k=10)] for q in queries]


def run_trials(images: Path, out: Path, moments: list[str], queries: list[str], seed: int = 0) -> dict:
    """The reference run, then one kill-and-resume trial per moment; returns the tally."""
    from mmodal.indexes.folders import open_index
    from mmodal.model import MModalModel
    from mmodal.search import Query, Searcher

    rng = random.Random(seed)
    started = time.perf_counter()
    reference_run = _index(images, out / "reference")
    _, err = reference_run.communicate(timeout=RUN_SECONDS)
    if reference_run.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed: {err[-2000:]}")
    run_seconds = time.perf_counter() - started
    model = MModalModel.from_pretrained("shapes")
    with open_index(out / "reference") as index:
        reference = {"count": index.count(), "results": _results(Searcher(model, index), queries, Query)}
    trials = []
    for i, moment in enumerate(moments):
        folder = out / f"trial-{i:02d}"
        if moment == "random":
            delay = rng.uniform(0.3, 0.9) * run_seconds
            for _ in range(RANDOM_TRIES):  # a run that ended before its moment is tried again, sooner
                shutil.rmtree(folder, ignore_errors=True)
                process = _index(images, folder)
                try:
                    process.wait(delay)
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
                process.communicate()
                killed = process.returncode == -signal.SIGKILL
                if killed:
                    break
                delay /= 2
        else:
            process = _index(images, folder, moment, seed=rng.randrange(1 << 30))
            process.communicate(timeout=RUN_SECONDS)
            delay, killed = None, process.returncode == -signal.SIGKILL
        at_kill = _committed(folder)
        resumed = _index(images, folder)
        _, err = resumed.communicate(timeout=RUN_SECONDS)
        problems = [f"the resumed run failed: {err[-1000:]}"] if resumed.returncode != 0 else []
        problems = problems or check_index(folder, reference, queries, model)
        trials.append(
            {
                "moment": moment,
                "after_seconds": None if delay is None else round(delay, 2),
                "killed": killed,
                "committed_at_kill": at_kill,
                "problems": problems,
            }
        )
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "images": reference["count"],
        "uninterrupted_seconds": round(run_seconds, 1),
        "trials": len(trials),
        "killed": sum(t["killed"] for t in trials),
        "whole_after_resume": sum(not t["problems"] for t in trials),
        "detail": trials,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=20, help="kills; the first two aimed, the rest at random")
    parser.add_argument("--out", default="runs/crashes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=AIMED, help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child, args.seed, [a for a in args.rest if a != "--"])

    from mmodal.data.dataset import read_dataset
    from mmodal.data.generate import generate_shapes

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    generate_shapes(out / "shapes", n=args.images, seed=77, split="test", n_queries=20, workers=2)
    queries = [q.text for q in read_dataset(out / "shapes").queries[:10]]
    moments = (list(AIMED) + ["random"] * args.trials)[: args.trials]
    result = run_trials(out / "shapes" / "images", out, moments, queries, args.seed)
    print(json.dumps(result, indent=2))
    return 0 if result["whole_after_resume"] == result["trials"] == result["killed"] else 1


if __name__ == "__main__":
    sys.exit(main())
