"""Worker processes that start clean and end with the process that started them.

Forking a process whose torch threads hold locks can deadlock the child, so workers come from a fork server
(or are spawned where there is none). A worker's parent is then the fork server, which lives as long as any
worker does (each holds its liveness pipe): so each worker watches the process that made the pool, and ends
when it ends, even by kill -9, taking the fork server with it. This module imports no torch.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext


def clean_context(preload: list[str]) -> BaseContext:
    """A start context whose workers import only ``preload`` (and the main module, which must stay light)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload)
    return context


def worker_pool(workers: int, preload: list[str]) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes that import only ``preload`` and end with this process."""
    return ProcessPoolExecutor(
        workers, mp_context=clean_context(preload), initializer=exit_with, initargs=(os.getpid(),)
    )


def exit_with(owner_pid: int) -> None:
    """Runs first in each worker: it dies with ``owner_pid``, however that process ends."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        os.kill(owner_pid, 0)
    except ProcessLookupError:  # the owner died before the line above took effect
        os._exit(1)
    threading.Thread(target=_exit_when_gone, args=(owner_pid,), daemon=True, name="owner-watch").start()


def _exit_when_gone(pid: int) -> None:
    """Ends this process when ``pid`` ends: a pidfd turns readable then; elsewhere, poll once a second."""
    try:
        select.select([os.pidfd_open(pid)], [], [])
    except (AttributeError, OSError):
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
    os._exit(1)
