"""Two costs Gradio pays on every event that a busy server need not, found by profiling the web process under
the load check (RELIABILITY.md); :func:`trim` is called before the queue is made."""

from __future__ import annotations

import importlib.util
import os
import sys

# Gradio summarises its last 10,000 events in a pandas table (for its monitoring page) after every event by
# default: under load that took a quarter of the web process's time. Once per this many events is plenty.
ANALYTICS_EVERY_EVENTS = 1000


def trim() -> None:
    # Read by the queue when it is made; a value the user set is kept.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(ANALYTICS_EVERY_EVENTS))
    # Gradio imports matplotlib around every event to pin its backend; where it is not installed, each try
    # searches the whole import path again (4 % of the web process). A module that is None in sys.modules fails
    # to import at once.
    if "matplotlib" not in sys.modules and importlib.util.find_spec("matplotlib") is None:
        sys.modules["matplotlib"] = None
