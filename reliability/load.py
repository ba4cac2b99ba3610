"""Load on the running app: many clients at once searching by text, image and voice and asking questions.

    python -m reliability.load --clients 50 --seconds 60 --out runs/load [--api rest]

Generates a Shapes collection, indexes it and serves it with `mmodal serve` on loopback, then runs the
clients as threads, each a closed loop (send a request, wait for its answer, think, send the next) that stops
by itself at the deadline; each keeps one session, as a page or `gradio_client` does (``--api page``), or
calls the REST API (``--api rest``) as `curl` or any HTTP client would. Reports latency
percentiles and errors per endpoint, the server's memory and its file cache on disk at the start and at the
end, and what a client is told when the queue is full. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from reliability.fuzz import call, serve, stop, upload

MIX = (("text", 0.6), ("image", 0.15), ("voice", 0.1), ("ask", 0.15))


def _rss_mib(pid: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _session_processes(pid: int) -> list[tuple[str, list[str]]]:
    """(pid, the /proc stat fields after the command) of every process of the server's session."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Fields after the command's closing parenthesis: state, ppid, pgrp, session, …, utime (12), stime (13)
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == pid:
                found.append((entry.name, fields))
        except (OSError, IndexError, ValueError):  # the process ended while being read
            continue
    return found


def server_memory_mib(pid: int) -> float:
    """Resident memory of the server: its process and every process of its session (the model's workers), MiB."""
    return sum(_rss_mib(process) for process, _ in _session_processes(pid))


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time so far of the web process, of its model workers (the rest of its session) and of these clients."""
    ticks = os.sysconf("SC_CLK_TCK")
    spent = {"web": 0.0, "workers": 0.0}
    for process, fields in _session_processes(pid):
        spent["web" if int(process) == pid else "workers"] += (int(fields[11]) + int(fields[12])) / ticks
    own = os.times()
    spent["clients"] = own.user + own.system
    return spent


def slope_mib_per_minute(samples: list[float], every_seconds: float) -> float:
    """The least-squares slope of memory samples taken every ``every_seconds``."""
    if len(samples) < 2:
        return float("nan")
    minutes = np.arange(len(samples)) * every_seconds / 60
    return float(np.polyfit(minutes, samples, 1)[0])


def folder_mib(folder: Path) -> tuple[int, float]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files) / 2**20


def rest_call(client: httpx.Client, url: str, kind: str, rng: random.Random, texts, images, clips, questions):
    """One request of ``kind`` to the REST API; returns (outcome, detail) as :func:`call` does."""
    api = f"{url}/api/v1"
    if kind == "text":
        reply = client.get(f"{api}/search", params={"q": rng.choice(texts), "k": 12})
    elif kind in ("image", "voice"):
        field, path = ("image", rng.choice(images)) if kind == "image" else ("audio", rng.choice(clips))
        reply = client.post(f"{api}/search", data={"k": 12}, files={field: (path.name, path.read_bytes())})
    else:
        picture, question = rng.choice(questions)
        files = {"image": (picture.name, picture.read_bytes())}
        reply = client.post(f"{api}/ask", data={"question": question, "alternatives": 3}, files=files)
    if reply.status_code >= 500:
        return "unhandled", f"HTTP {reply.status_code}: {reply.text[:300]}"
    if reply.status_code >= 400:
        return "refused", f"HTTP {reply.status_code}: {reply.text[:300]}"
    return "answered", reply.text


def _client(
    url: str, api: str, deadline: float, seed: int, mix, texts, images, clips, questions, think: float, record
) -> None:
    rng = random.Random(seed)
    session = f"load-client-{seed}"
    with httpx.Client(timeout=httpx.Timeout(120.0, connect=10.0)) as client:
        while time.monotonic() < deadline:
            kind = rng.choices([k for k, _ in mix], [w for _, w in mix])[0]
            started = time.perf_counter()
            try:
                if api == "rest":
                    outcome, detail = rest_call(client, url, kind, rng, texts, images, clips, questions)
                elif kind == "text":
                    query = [rng.choice(texts), None, None, "", 12, True]
                    outcome, detail = call(client, url, "search", query, session)
                elif kind == "image":
                    picture = upload(client, url, rng.choice(images))
                    outcome, detail = call(client, url, "search", [None, picture, None, "", 12, True], session)
                elif kind == "voice":
                    clip = upload(client, url, rng.choice(clips))
                    outcome, detail = call(client, url, "search", [None, None, clip, "", 12, True], session)
                else:
                    picture, question = rng.choice(questions)
                    outcome, detail = call(client, url, "ask", [upload(client, url, picture), question, 3], session)
            except httpx.HTTPError as error:
                outcome, detail = "transport", repr(error)
            record(kind, outcome, time.perf_counter() - started, detail)
            time.sleep(rng.uniform(0, 2 * think))


def queue_full_message(url: str, burst: int) -> tuple[int, str]:
    """Sends ``burst`` searches at once; returns how many the queue refused, and what it said."""
    refused: list[str] = []

    def one(_):
        with httpx.Client(timeout=120.0) as client:
            outcome, detail = call(client, url, "search", ["a red circle", None, None, "", 12, True])
            if outcome != "answered":
                refused.append(detail)

    with ThreadPoolExecutor(burst) as pool:
        list(pool.map(one, range(burst)))
    return len(refused), (refused[0] if refused else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--think", type=float, default=1.0, help="mean pause between a client's requests, s")
    parser.add_argument("--images", type=int, default=1000, help="images in the served collection")
    parser.add_argument("--burst", type=int, default=200, help="simultaneous requests to fill the queue")
    parser.add_argument("--out", default="runs/load")
    parser.add_argument("--port", type=int, default=7893)
    parser.add_argument("--api", choices=("page", "rest"), default="page", help="the page's API or the REST API")
    args = parser.parse_args(argv)

    from mmodal.data.dataset import read_dataset
    from mmodal.data.generate import generate_shapes
    from mmodal.shapes.speech import can_speak

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    generate_shapes(out / "shapes", n=args.images, seed=31, split="test", with_speech=can_speak(), n_queries=60)
    dataset = read_dataset(out / "shapes")
    subprocess.run(
        [sys.executable, "-m", "mmodal.cli", "index", str(out / "shapes" / "images"), "--index", str(out / "index")],
        check=True,
        capture_output=True,
    )
    files = {r.id: dataset.root / r.file for r in dataset.images}
    texts = [q.text for q in dataset.queries]
    images = list(files.values())[:50]
    clips = [dataset.root / q.audio for q in dataset.queries if q.audio] or []
    questions = [(files[q.image_id], q.question) for q in dataset.questions[:100]]
    mix = MIX if clips else tuple(m for m in MIX if m[0] != "voice")

    cache = out / "gradio-cache"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(cache)}
    server = serve(out / "index", args.port, out / "server.log", indexing=True, env=env)
    url = f"http://127.0.0.1:{args.port}"
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, list[str]] = defaultdict(list)
    lock = threading.Lock()

    def record(kind: str, outcome: str, seconds: float, detail: str) -> None:
        with lock:
            latencies[kind].append(seconds)
            if outcome != "answered":
                errors[kind].append(f"{outcome}: {detail[:200]}")

    try:
        with httpx.Client(timeout=120) as warm:  # one of each kind before measuring: the first calls load lazily
            call(warm, url, "search", [texts[0], None, None, "", 12, True])
            call(warm, url, "search", [None, upload(warm, url, images[0]), None, "", 12, True])
            if clips:
                call(warm, url, "search", [None, None, upload(warm, url, clips[0]), "", 12, True])
            call(warm, url, "ask", [upload(warm, url, questions[0][0]), questions[0][1], 3])
        memory_start, disk_start = server_memory_mib(server.pid), folder_mib(cache)
        cpu_start, measured_from = cpu_seconds(server.pid), time.monotonic()
        memory_every_10s: list[float] = []
        deadline = time.monotonic() + args.seconds
        threads = [
            threading.Thread(
                target=_client,
                args=(url, args.api, deadline, i, mix, texts, images, clips, questions, args.think, record),
                daemon=True,
            )
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(10.0, left))
            memory_every_10s.append(round(server_memory_mib(server.pid)))
        for t in threads:
            t.join(300)
        hung = sum(t.is_alive() for t in threads)
        cpu_end, measured_for = cpu_seconds(server.pid), time.monotonic() - measured_from
        memory_end, disk_end = server_memory_mib(server.pid), folder_mib(cache)
        # Where the server's time went (queue, model, transfer to its workers), before the burst adds to it.
        timings = httpx.get(f"{url}/api/v1/health", timeout=30).json()["timings"]
        refused, message = queue_full_message(url, args.burst)
    finally:
        stop(server)
    per_endpoint = {
        kind: {
            "requests": len(v),
            "errors": len(errors[kind]),
            "p50_ms": round(float(np.percentile(v, 50)) * 1000),
            "p95_ms": round(float(np.percentile(v, 95)) * 1000),
            "p99_ms": round(float(np.percentile(v, 99)) * 1000),
        }
        for kind, v in sorted(latencies.items())
    }
    result = {
        "api": args.api,
        "clients": args.clients,
        "seconds": args.seconds,
        "mean_think_seconds": args.think,
        "endpoints": per_endpoint,
        "first_errors": {k: v[:3] for k, v in errors.items() if v},
        "server_timings": timings,
        # Cores each part kept busy while the clients ran (out of os.cpu_count()).
        "cores_used": {part: round((cpu_end[part] - cpu_start[part]) / measured_for, 2) for part in cpu_end},
        "clients_still_running_at_deadline_plus_300s": hung,
        "server_memory_mib": {
            "start": round(memory_start),
            "every_10s": memory_every_10s,
            "end": round(memory_end),
            "slope_per_minute": round(slope_mib_per_minute(memory_every_10s, 10.0), 2),
            # After the first minute, when the lanes, sessions and caches have filled (runs of 2 minutes or more).
            "slope_per_minute_after_1_min": round(slope_mib_per_minute(memory_every_10s[6:], 10.0), 2),
        },
        "file_cache": {"start": {"files": disk_start[0], "mib": round(disk_start[1], 1)},
                       "end": {"files": disk_end[0], "mib": round(disk_end[1], 1)}},
        "queue_full": {"burst": args.burst, "refused": refused, "message": message},
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0 if not any(errors.values()) and not hung else 1


if __name__ == "__main__":
    sys.exit(main())
