"""Training checkpoints: the model folder plus optimizer and trainer state, swapped in atomically.

Nothing is pickled: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmodal.indexes.atomic import default_file_mode, fsync_tree, write_json

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"


def save_checkpoint(run: Path, model, optimizer: torch.optim.Optimizer, state: dict) -> Path:
    """Writes ``run/checkpoint`` via a side folder and renames, so a crash leaves the previous one whole."""
    partial, target, old = run / f"{CHECKPOINT_DIR}.partial", run / CHECKPOINT_DIR, run / f"{CHECKPOINT_DIR}.old"
    if not target.exists() and find_checkpoint(run) == old:  # a swap cut short: the old one is the whole one
        old.rename(target)
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    optimizer_state = optimizer.state_dict()
    tensors = {"torch_rng": torch.get_rng_state()}
    for param_id, values in optimizer_state["state"].items():
        for key, value in values.items():
            tensors[f"{param_id}.{key}"] = (value if torch.is_tensor(value) else torch.tensor(value)).detach().cpu()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial / OPTIMIZER_FILE))
    os.chmod(partial / OPTIMIZER_FILE, default_file_mode())
    write_json(partial / STATE_FILE, {**state, "param_groups": optimizer_state["param_groups"]})
    fsync_tree(partial)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    partial.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def find_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint of a run (the previous one if a swap was cut short), or None."""
    for candidate in (run / CHECKPOINT_DIR, run / f"{CHECKPOINT_DIR}.old"):
        if (candidate / STATE_FILE).is_file() and (candidate / OPTIMIZER_FILE).is_file():
            return candidate
    return None


def load_trainer_state(folder: Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restores the optimizer and torch's RNG; returns the JSON trainer state (step, rng, bank...)."""
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / OPTIMIZER_FILE))
    except (ValueError, SafetensorError) as error:
        raise ValueError(
            f"the checkpoint in {folder} is damaged ({error}); delete that folder: --resume then goes on from the "
            "previous checkpoint when one is kept, else the run starts over"
        ) from None
    torch.set_rng_state(tensors.pop("torch_rng"))
    per_param: dict[int, dict] = {}
    for name, value in tensors.items():
        param_id, key = name.split(".", 1)
        per_param.setdefault(int(param_id), {})[key] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": state.pop("param_groups")})
    return state
