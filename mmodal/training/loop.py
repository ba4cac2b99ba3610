"""The training loop: a recipe's stages (``mmodal.training.stages``) on one step counter, each training its own
modules with its own warm-up and decay, checkpointed atomically and resumable, one process or many under
``torchrun`` (each process draws its own batches; DistributedDataParallel averages the gradients)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mmodal.model import MModalModel
from mmodal.training import distributed
from mmodal.training.checkpoint import find_checkpoint, load_trainer_state, save_checkpoint
from mmodal.training.config import TrainConfig
from mmodal.training.mining import NeighbourBank
from mmodal.training.slot_batches import embed_ground_truth, freeze_towers
from mmodal.training.speech_recipe import SpeechTrainingData, decayed
from mmodal.training.stages import (
    Stage,
    build_model,
    ensure_scenes,
    ensure_speech,
    needs,
    stage_at,
    stage_data,
    stages_of,
)
from mmodal.training.temperature import Temperature

log = logging.getLogger(__name__)

MODEL_DIR = "model"
TRAIN_CONFIG_FILE = "train_config.json"
CURVE_FILE = "curve.jsonl"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def _schedule(config: TrainConfig, stages):
    """Each stage's learning rate over the run: its peak after a linear warm-up, then a cosine decay to 5 %."""

    def factor(step: int) -> float:
        start, length, stage = stage_at(step, stages)
        step, warmup = step - start, min(config.warmup_steps, max(1, length // 5))
        peak = config.lr or stage.lr
        if step < warmup:
            return peak * (step + 1) / warmup
        progress = (step - warmup) / max(1, length - warmup)
        return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    return factor


def _routing_health(model: MModalModel) -> dict[str, str]:
    """The MoE core's health in the last step: the least-used expert's share over uniform, router entropy."""
    if not model.config.text.n_routed_experts or not model.language.router_stats:
        return {}  # the core has not run yet (the perception stage reads no text)
    load = model.language.expert_load()
    return {
        "moe_min_share": f"{float(load.min() * len(load)):.2f}",
        "router_entropy": f"{model.language.router_entropy():.2f}",
    }


def _record_curve(run: Path, step: int, stage: Stage, losses: dict[str, torch.Tensor], figures: dict[str, float]):
    """One line of the run's training curve (``curve.jsonl``): the step's losses and the stage's held-out figures."""
    line = {"step": step, "stage": stage.name, **{k: round(v.item(), 5) for k, v in losses.items()}, **figures}
    if figures:
        log.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    with open(run / CURVE_FILE, "a", encoding="utf-8") as curve:
        curve.write(json.dumps(line) + "\n")


def train(config: TrainConfig, resume: bool = False, for_steps: int | None = None) -> Path | None:
    """Trains a model as ``config`` says and writes it to ``config.out/model``; returns that folder.

    With ``for_steps``, stops after that many steps of this call at a checkpoint (returns None unless the
    run is finished), so a long schedule can be trained in pieces with ``resume``.
    """
    run = Path(config.out)
    run.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    ranks = distributed.start(device)
    if ranks.world > 1 and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if device.type == "cpu":
        torch.set_num_threads(config.workers)
    torch.manual_seed(config.seed + ranks.rank)
    rng = np.random.default_rng(config.seed + ranks.rank)
    stages = stages_of(config)
    total = stages[-1][0] + stages[-1][1]
    if not ranks.is_main:
        distributed.barrier()  # the first process generates missing data; the others then read it
    scenes = ensure_scenes(config) if needs(config, "scenes") else None
    speech = SpeechTrainingData(ensure_speech(config), config.seed) if needs(config, "speech") else None
    if ranks.is_main and ranks.world > 1:
        distributed.barrier()
    checkpoint = find_checkpoint(run) if resume else None
    if resume and checkpoint is None:
        log.warning("no checkpoint in %s: starting from scratch", run)
    if checkpoint:
        model = MModalModel.from_pretrained(checkpoint, device)
    else:
        model = build_model(config, speech).to(device)
    model.train()
    temperature = Temperature().to(device)
    params = [*model.named_parameters(), ("temperature", temperature.log_scale)]
    decay = [p for name, p in params if decayed(name, p)]
    no_decay = [p for name, p in params if not decayed(name, p)]
    # Learning rates come whole from the schedule (each stage has its own peak), so the base rate is 1.
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=1.0
    )
    bank = NeighbourBank()
    step = 0
    if checkpoint:
        state = load_trainer_state(checkpoint, optimizer)
        step = state["step"]
        rng.bit_generator.state = state["rng"]
        if ranks.rank:  # the saved generator is the first process's; each other one keeps its own stream
            rng = np.random.default_rng([config.seed + ranks.rank, step])
        bank.pairs = np.asarray(state.get("mined_pairs", []), dtype=np.int64).reshape(-1, 2)
        with torch.no_grad():
            temperature.log_scale.fill_(state.get("temperature", temperature.log_scale.item()))
        log.info("resumed from %s at step %d", checkpoint, step)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, stages), last_epoch=step - 1)
    config.save(run / TRAIN_CONFIG_FILE)
    use_amp = device.type == "cuda"
    started, samples = time.time(), 0
    stop_at = min(total, step + for_steps) if for_steps else total
    stage: Stage | None = None
    data: dict[str, object] = {}
    with tqdm(total=total, initial=step, desc=f"train {config.recipe}", unit="step", disable=not ranks.is_main) as bar:
        while step < stop_at:
            start, _, now = stage_at(step, stages)
            if now is not stage:
                stage = now
                trained = freeze_towers(model, stage.modules)
                temperature.log_scale.requires_grad_("temperature" in stage.modules)
                trained += [temperature.log_scale] if "temperature" in stage.modules else []
                if stage.data_kind not in data:
                    data[stage.data_kind] = stage_data(stage.data_kind, config, model, scenes, speech)
                stage_step = distributed.TrainingStep(model, stage.losses, temperature)
                if ranks.world > 1:
                    stage_step = DistributedDataParallel(
                        stage_step,
                        device_ids=[device.index] if device.type == "cuda" else None,
                        find_unused_parameters=True,  # a step without a question type leaves some heads out
                    )
                bar.set_description(f"train {config.recipe}: {stage.name}")
                log.info(
                    "stage %s: steps %d to %d, training %s",
                    stage.name,
                    start,
                    start + stage.length(config),
                    stage.modules,
                )
            batches = data[stage.data_kind]
            size = config.batch_size or stage.batch_size
            mined = np.zeros(0, np.int64)
            if stage.mines and config.mine_every:
                if step % config.mine_every == 0 or len(bank.pairs) == 0 and step == start:
                    bank.refresh(lambda idx, d=batches: embed_ground_truth(model, d, idx), batches.scenes, rng)
                mined = bank.sample(config.mined_per_batch, rng)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                losses = stage_step(batches, size, mined, step - start, config, rng)
            samples += size
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step == total:
                rate = samples / (time.time() - started)
                bar.set_postfix(
                    loss=f"{loss.item():.3f}",
                    **{k: f"{v.item():.3f}" for k, v in losses.items()},
                    **_routing_health(model),
                    samples_s=f"{rate:.0f}",
                )
            if step % config.validate_every == 0 and ranks.is_main:
                _record_curve(run, step, stage, losses, stage.validate(model, config))
            if (step % config.checkpoint_every == 0 or step == stop_at) and ranks.is_main:
                state = {
                    "step": step,
                    "rng": rng.bit_generator.state,
                    "mined_pairs": bank.pairs.tolist(),
                    "temperature": temperature.log_scale.item(),
                }
                save_checkpoint(run, model, optimizer, state)
                if _routing_health(model):
                    log.info(
                        "step %d: expert share %s (uniform %.3f), router entropy %.2f of its maximum",
                        step,
                        " ".join(f"{x:.3f}" for x in model.language.expert_load().tolist()),
                        1 / model.config.text.n_routed_experts,
                        model.language.router_entropy(),
                    )
    distributed.stop()
    if not ranks.is_main:
        return None
    if step < total:
        log.info("stopped at step %d of %d; continue with --resume", step, total)
        return None
    final = run / MODEL_DIR
    model.eval()
    model.save_pretrained(final, dtype=getattr(torch, config.final_dtype))
    config.save(final / TRAIN_CONFIG_FILE)
    log.info("trained %d steps in %.1f min; model in %s", step, (time.time() - started) / 60, final)
    return final
