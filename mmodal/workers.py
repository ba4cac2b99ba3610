"""Worker processes that start clean: forking a process whose torch threads hold locks can deadlock the
child, so workers come from a fork server (or are spawned where there is none)."""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext


def clean_context(preload: list[str]) -> BaseContext:
    """A start context whose workers import only ``preload`` (and the main module, which must stay light)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload)
    return context
