"""Hostile inputs through the CLI and the running web app's HTTP API: nothing crashes, hangs or leaks.

    python -m reliability.fuzz --files 3000 --requests 7000 --out runs/fuzz

Writes a folder of hostile image files and indexes it with `mmodal index`; runs `mmodal search` and
`mmodal ask` on hostile texts, images and clips; serves the index with `mmodal serve` and sends it hostile
requests (texts, uploads, wrong-typed JSON bodies, paths that try to leave the indexed folders). Every case
must end answered or refused with a message of mmodal's own, within its time limit; the server must still
give the same results afterwards. Prints the tally as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from reliability.hostile import (
    AUDIO_KINDS,
    TEXT_KINDS,
    HostileFile,
    hostile_text,
    write_audio_files,
    write_image_files,
    wrong_typed_values,
)

REQUEST_SECONDS = 60.0  # a request still unanswered after this counts as a hang
CLI_SECONDS = 180.0
REFERENCE_QUERY = "a red circle"
LEAKS = ("Traceback", "/tmp/gradio", "Could not preprocess")  # what a user must never be shown
FRAMEWORK_REFUSALS = ("validation error for", "was not uploaded by a user", "didn't receive enough input values")
ACCEPTABLE = ("answered", "refused", "refused-by-gradio")


@dataclass
class Tally:
    outcomes: Counter = field(default_factory=Counter)  # (channel, case kind, outcome) → count
    failures: list[dict] = field(default_factory=list)  # the cases that broke a promise, for replay
    latencies: list[float] = field(default_factory=list)

    def add(self, channel: str, kind: str, outcome: str, detail: str = "", seconds: float = 0.0) -> None:
        self.outcomes[(channel, kind, outcome)] += 1
        self.latencies.append(seconds)
        leaked = outcome == "refused" and any(leak in detail for leak in LEAKS)
        if outcome not in ACCEPTABLE or leaked:
            self.failures.append({"channel": channel, "kind": kind, "outcome": outcome, "detail": detail[:500]})

    @property
    def cases(self) -> int:
        return sum(self.outcomes.values())

    def summary(self) -> dict:
        by_outcome: Counter = Counter()
        for (channel, _, outcome), n in self.outcomes.items():
            by_outcome[f"{channel}:{outcome}"] += n
        return {
            "cases": self.cases,
            "by_outcome": dict(sorted(by_outcome.items())),
            "failures": len(self.failures),
            "first_failures": self.failures[:10],
            "max_seconds": round(max(self.latencies, default=0.0), 2),
        }


# ------------------------------------------------------------------------------------------------ CLI


def _mmodal(*args: str, timeout: float = CLI_SECONDS) -> tuple[str, str, float]:
    """Runs the CLI; returns (outcome, what it printed on error, seconds)."""
    args = tuple(a.replace("\x00", "") for a in args)  # no command line can carry a NUL byte
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mmodal.cli", *args], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return "hang", "", time.perf_counter() - started
    seconds = time.perf_counter() - started
    if done.returncode == 0:
        return "answered", "", seconds
    message = done.stderr.strip().splitlines()[-1:] or [""]
    clean = "ERROR mmodal" in done.stderr and "Traceback" not in done.stderr
    return ("refused" if clean else "unhandled"), (message[0] if clean else done.stderr[-2000:]), seconds


def index_hostile_folder(files: list[HostileFile], folder: Path, index_dir: Path, tally: Tally) -> dict:
    """`mmodal index` over the folder: it must finish, index every usable image and skip every unusable one."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mmodal.cli", "index", str(folder), "--index", str(index_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0 or "Traceback" in done.stderr:
        tally.add("cli-index", "run", "unhandled", done.stderr[-2000:], seconds)
        return {}
    summary = json.loads(done.stdout)
    skipped = {s["path"] for s in summary["skipped"]}
    for case in files:
        if case.kind == "link_loop":  # a folder link: walked into at most once, and the run ended
            tally.add("cli-index", case.kind, "answered")
            continue
        shown = os.fsencode(os.path.abspath(case.path)).decode("utf-8", "backslashreplace")
        was_skipped = shown in skipped
        if (
            case.usable is True
            and was_skipped
            and "UTF-8" not in next((s["reason"] for s in summary["skipped"] if s["path"] == shown), "")
        ):
            tally.add("cli-index", case.kind, "lost", f"{shown} was skipped but is a usable image")
        elif case.usable is False and not was_skipped:
            tally.add("cli-index", case.kind, "unhandled", f"{shown} is unusable but was not reported as skipped")
        else:
            tally.add("cli-index", case.kind, "refused" if was_skipped else "answered")
    return summary


def cli_cases(index_dir: Path, images: list[HostileFile], clips: list[HostileFile], n: int, tally: Tally) -> None:
    """``n`` CLI calls: text searches, image and voice searches, questions; each a fresh process."""
    rng = np.random.default_rng(1)
    plain_images = [f for f in images if f.kind not in ("broken_link", "link_loop")]
    for i in range(n):
        mode = i % 4
        if mode == 0:
            kind = TEXT_KINDS[(i // 4) % len(TEXT_KINDS)]
            outcome = _mmodal("search", hostile_text(kind, rng)[:20000], "--index", str(index_dir), "--json")
        elif mode == 1:
            case = plain_images[int(rng.integers(len(plain_images)))]
            kind = case.kind
            outcome = _mmodal("search", "--image", str(case.path), "--index", str(index_dir), "--json")
        elif mode == 2:
            case = clips[(i // 4) % len(clips)]
            kind = case.kind
            outcome = _mmodal("search", "--audio", str(case.path), "--index", str(index_dir), "--json")
        else:
            case = plain_images[int(rng.integers(len(plain_images)))]
            kind = f"ask:{case.kind}"
            question = hostile_text(TEXT_KINDS[int(rng.integers(len(TEXT_KINDS)))], rng)[:20000]
            outcome = _mmodal("ask", str(case.path), question, "--json")
        tally.add("cli", kind, outcome[0], outcome[1], outcome[2])


# ----------------------------------------------------------------------------------------------- HTTP


def call(client: httpx.Client, url: str, api: str, data: object, session: str | None = None) -> tuple[str, str]:
    """One call of the app's API through Gradio's REST route; returns (outcome, message or reply). A client that
    keeps a ``session`` across calls, as a page or `gradio_client` does, holds one session's state on the server."""
    try:
        posted = client.post(f"{url}/gradio_api/call/{api}", json={"data": data, "session_hash": session})
    except httpx.TimeoutException:
        return "hang", f"POST {api} timed out"
    if posted.status_code >= 500:
        return "unhandled", f"HTTP {posted.status_code}: {posted.text[:300]}"
    if posted.status_code >= 400:
        return "refused", f"HTTP {posted.status_code}: {posted.text[:300]}"
    event_id = posted.json()["event_id"]
    try:
        with client.stream("GET", f"{url}/gradio_api/call/{api}/{event_id}") as stream:
            event = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line[len("event: ") :]
                elif line.startswith("data: ") and event in ("complete", "error"):
                    payload = json.loads(line[len("data: ") :])
                    if event == "complete":
                        return "answered", json.dumps(payload)
                    # mmodal's refusals are gr.Error, which Gradio sends with a title; anything else escaped.
                    if isinstance(payload, dict) and payload.get("title") and payload.get("error"):
                        return "refused", str(payload["error"])
                    # Gradio checks a file field's shape, and that a file was uploaded, before mmodal runs.
                    message = payload.get("error") if isinstance(payload, dict) else None
                    if isinstance(message, str) and any(m in message for m in FRAMEWORK_REFUSALS):
                        return "refused-by-gradio", message
                    return "unhandled", json.dumps(payload)[:500]
    except httpx.TimeoutException:
        return "hang", f"{api} gave no result in {REQUEST_SECONDS:.0f} s"
    return "unhandled", f"{api}: the event stream ended without a result"


def upload(client: httpx.Client, url: str, path: Path) -> dict | None:
    """Uploads a file as the page does; returns the FileData that names it, or None if refused."""
    name = os.fsencode(path.name).decode("utf-8", "replace")  # as a browser would send a name that is not UTF-8
    reply = client.post(f"{url}/gradio_api/upload", files=[("files", (name, path.read_bytes()))])
    if reply.status_code != 200:
        return None
    return {"path": reply.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def http_cases(
    url: str, images: list[HostileFile], clips: list[HostileFile], n: int, tally: Tally, seed: int = 2
) -> bool:
    """``n`` hostile requests; returns whether the reference search gave the same results afterwards."""
    rng = np.random.default_rng(seed)
    url = url.rstrip("/")
    timeout = httpx.Timeout(REQUEST_SECONDS, connect=10.0)
    with httpx.Client(timeout=timeout) as client:
        before = _reference(client, url)
        uploads: dict[Path, dict | None] = {}

        def uploaded(case: HostileFile) -> dict | None:
            if case.path not in uploads:
                uploads[case.path] = upload(client, url, case.path)
            return uploads[case.path]

        files = [f for f in images if f.path.is_file()]
        for i in range(n):
            mode = i % 6
            started = time.perf_counter()
            if mode == 0:
                kind = TEXT_KINDS[(i // 6) % len(TEXT_KINDS)]
                k = [10, 1, 0, -5, 100, 10**9][int(rng.integers(6))]
                outcome = call(client, url, "search", [hostile_text(kind, rng), None, None, "", k, True])
            elif mode == 1:
                case = files[int(rng.integers(len(files)))]
                kind = f"image:{case.kind}"
                outcome = call(client, url, "search", [None, uploaded(case), None, "", 10, True])
            elif mode == 2:
                case = clips[(i // 6) % len(clips)]
                kind = f"audio:{case.kind}"
                outcome = call(client, url, "search", [None, None, uploaded(case), "", 10, True])
            elif mode == 3:
                case = files[int(rng.integers(len(files)))]
                text_kind = TEXT_KINDS[int(rng.integers(len(TEXT_KINDS)))]
                kind = f"ask:{case.kind}:{text_kind}"
                outcome = call(client, url, "ask", [uploaded(case), hostile_text(text_kind, rng), 3])
            elif mode == 4:
                api, arity = [("search", 6), ("ask", 3), ("add_folder", 1), ("stats", 0)][int(rng.integers(4))]
                data = [wrong_typed_values(rng) for _ in range(arity)]
                kind = f"wrong-types:{api}"
                outcome = call(client, url, api, data if rng.random() < 0.9 else wrong_typed_values(rng))
            else:
                kind = "file-route"
                outcome = _file_route(client, url, rng)
            tally.add("http", kind, outcome[0], outcome[1], time.perf_counter() - started)
        after = _reference(client, url)
    return before == after


def _reference(client: httpx.Client, url: str) -> list:
    outcome, reply = call(client, url, "search", [REFERENCE_QUERY, None, None, "", 10, True])
    if outcome != "answered":
        raise RuntimeError(f"the reference search failed: {reply}")
    return [(row["file"], round(row["score"], 4)) for row in json.loads(reply)[-1]]  # the JSON view of the rows


TRAVERSALS = (
    "/etc/passwd",
    "../../../../etc/passwd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%252f..%252fetc%252fpasswd",
    "/proc/self/environ",
    "....//....//etc/passwd",
)


def _file_route(client: httpx.Client, url: str, rng: np.random.Generator) -> tuple[str, str]:
    """Asks the file route for something outside the indexed folders: it must refuse."""
    target = TRAVERSALS[int(rng.integers(len(TRAVERSALS)))]
    try:
        reply = client.get(f"{url}/gradio_api/file={target}")
    except httpx.TimeoutException:
        return "hang", f"file={target}"
    if reply.status_code == 200 and b"root:" in reply.content:
        return "leaked", f"file={target} served {reply.content[:80]!r}"
    if reply.status_code >= 500:
        return "unhandled", f"file={target}: HTTP {reply.status_code}"
    return "refused", f"file={target}: HTTP {reply.status_code}"


# ------------------------------------------------------------------------------------------------ run


# Exceptions the server logs that are refusals: mmodal's own (gr.Error) and Gradio's checks of a request's
# shape, which run before any mmodal code and answer the client with what was wrong.
SERVER_REFUSALS = (
    "gradio.exceptions.Error",
    "pydantic_core._pydantic_core.ValidationError",
    "gradio.exceptions.InvalidPathError",
    "ValueError: An event handler",
)


def server_errors(log: str) -> Counter:
    """The last line of each traceback in the server's log (the exception and its message), counted."""
    found: Counter = Counter()
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                j += 1
            if j < len(lines):
                found[lines[j][:160]] += 1
    return found


def serve(
    index_dir: Path, port: int, log_path: Path, indexing: bool = False, env: dict | None = None
) -> subprocess.Popen:
    """`mmodal serve` in its own process group, answering once its page loads."""
    log = log_path.open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mmodal.cli", "serve", "--index", str(index_dir), "--port", str(port)]
        + ([] if indexing else ["--no-indexing"]),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(1)
        if server.poll() is not None:
            break
    stop(server)
    raise RuntimeError(f"the app did not start; see {log_path}")


def stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGINT)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=3000, help="hostile image files to index")
    parser.add_argument("--cli", type=int, default=40, help="CLI calls (each a fresh process)")
    parser.add_argument("--requests", type=int, default=7000, help="HTTP requests to the running app")
    parser.add_argument("--out", default="runs/fuzz", help="work folder (replaced)")
    parser.add_argument("--port", type=int, default=7891)
    args = parser.parse_args(argv)

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    images = write_image_files(out / "images", args.files)
    clips = write_audio_files(out / "clips", AUDIO_KINDS)
    tally = Tally()
    started = time.perf_counter()
    index_hostile_folder(images, out / "images", out / "index", tally)
    cli_cases(out / "index", images, clips, args.cli, tally)
    server = serve(out / "index", args.port, out / "server.log")
    try:
        same = http_cases(f"http://127.0.0.1:{args.port}", images, clips, args.requests, tally)
    finally:
        stop(server)
    errors = server_errors((out / "server.log").read_text(errors="replace"))
    unhandled = {e: n for e, n in errors.items() if not e.startswith(SERVER_REFUSALS)}
    result = tally.summary() | {
        "same_results_after": same,
        "server_errors_logged": dict(errors.most_common()),
        "server_unhandled": unhandled,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))
    ok = not tally.failures and same and not unhandled
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
