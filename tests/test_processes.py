"""No process left behind: commands with worker processes, and the app, leave nothing running when they end,
whether they finish, are interrupted with Ctrl-C, or are killed with kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import free_port


def _process_table() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, state) for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (name) "
        table[int(entry)] = (int(fields[1]), fields[0])
    return table


def descendants(pid: int) -> set[int]:
    table = _process_table()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, (parent, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def still_running(pids: set[int]) -> set[int]:
    table = _process_table()
    return {p for p in pids if p in table and table[p][1] != "Z"}  # a zombie has ended; only its entry is left


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.fixture(scope="module")
def many_pictures(tmp_path_factory):
    """Enough small pictures that indexing them takes longer than starting the workers."""
    folder = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(1500):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return folder


def _start(args: list[str]) -> subprocess.Popen:
    # Ctrl-C as a terminal sends it, even when the suite itself runs in the background, where the shell has
    # set SIGINT to be ignored and children would inherit that.
    return subprocess.Popen(
        [sys.executable, "-m", "mmodal.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["kill -9", "Ctrl-C"])
@pytest.mark.parametrize("command", ["index", "data shapes"])
def test_a_command_ended_early_leaves_no_process(command, ending, many_pictures, tmp_path):
    if command == "index":
        args = ["index", str(many_pictures), "--index", str(tmp_path / "index"), "--workers", "2", "--batch-size", "8"]
    else:
        args = ["data", "shapes", "--out", str(tmp_path / "shapes"), "--n", "4000", "--seed", "1", "--split", "test"]
    process = _start(args)
    tree: set[int] = set()

    def workers_started() -> bool:
        tree.update(descendants(process.pid))
        return len(tree) >= 2  # the fork server and a worker

    assert _wait_for(workers_started, 120), "the workers never started"
    process.send_signal(signal.SIGKILL if ending == "kill -9" else signal.SIGINT)
    process.wait(60)
    assert _wait_for(lambda: not still_running(tree), 15), f"left running: {still_running(tree)}"


@pytest.mark.slow
def test_the_app_stops_on_ctrl_c_and_leaves_no_process(tmp_path):
    port = free_port()
    process = _start(["serve", "--index", str(tmp_path / "index"), "--port", str(port)])

    def answering() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert _wait_for(answering, 120), "the app never answered"
        tree = descendants(process.pid)
        process.send_signal(signal.SIGINT)
        assert process.wait(30) is not None
    finally:
        if process.poll() is None:
            process.kill()
    assert _wait_for(lambda: not still_running(tree), 15), f"left running: {still_running(tree)}"
    assert not answering()
