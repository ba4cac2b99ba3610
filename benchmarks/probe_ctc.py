"""Probe: can a small log-mel transformer (the audio tower's design, fresh) transcribe spoken Shapes queries
with a CTC head over the query words? Trains on train-split speech with nothing added (no augmentation, no
wordless clips, no embedding loss, batches drawn at random), and logs its CTC loss and greedy word error rate
on a spoken test split every 100 steps, as the speech stage of `mmodal train` logs them (curve.jsonl), so that
the two can be compared at equal steps on the same data.

    python benchmarks/probe_ctc.py --steps N --validation TEST_DIR --out CURVE.jsonl TRAIN_DIR [TRAIN_DIR ...]
    (speech sets from `mmodal data shapes --n 400 --queries 2000 --speech --split train|test --seed S`)
"""

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from mmodal.config import ModelConfig
from mmodal.training.config import TrainConfig
from mmodal.training.speech_recipe import (
    SpeechTrainingData,
    ValidationClips,
    decayed,
    fresh_tower,
    speech_audio,
    speech_datasets,
)

parser = argparse.ArgumentParser()
parser.add_argument("train", nargs="+")
parser.add_argument("--steps", type=int, required=True, help="the schedule's length")
parser.add_argument("--stop-at", type=int, help="stop after this many steps of the schedule")
parser.add_argument("--validation", required=True)
parser.add_argument("--out", required=True)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

torch.manual_seed(args.seed)
torch.set_num_threads(2)
config = TrainConfig()  # the schedule and weight decay of `mmodal train`
data = SpeechTrainingData([d for folder in args.train for d in speech_datasets(folder)], args.seed, wordless_clips=0)
validation = ValidationClips(args.validation)
tower = fresh_tower(speech_audio(ModelConfig().audio, data.vocabulary), args.seed)  # the stage's first weights
named = list(tower.named_parameters())
optimizer = torch.optim.AdamW(
    [
        {"params": [p for n, p in named if decayed(n, p)], "weight_decay": config.weight_decay},
        {"params": [p for n, p in named if not decayed(n, p)], "weight_decay": 0.0},
    ],
    lr=1.0,
)
warmup = min(config.warmup_steps, max(1, args.steps // 5))
peak = 1e-3


def rate(step: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, args.steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


rng = np.random.default_rng(args.seed)
start = time.time()
with open(args.out, "w", encoding="utf-8") as curve:
    for step in range(1, (args.stop_at or args.steps) + 1):
        waves, lengths, targets, _ = data.batch(32, rng, extras=())
        tokens, mask = tower(waves, lengths)
        flat = torch.tensor([w for t in targets for w in t])
        loss = F.ctc_loss(
            tower.word_log_probs(tokens).transpose(0, 1),
            flat,
            mask.sum(1),
            torch.tensor([len(t) for t in targets]),
            zero_infinity=True,
        )
        for group in optimizer.param_groups:
            group["lr"] = rate(step - 1)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tower.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0:
            line = {"step": step, "stage": "probe", "ctc": round(loss.item(), 5)}
            line["wer"] = validation.word_error_rate(tower)
            print(json.dumps(line), f"{time.time() - start:.0f}s", flush=True)
            curve.write(json.dumps(line) + "\n")
print(f"trained {step} steps in {(time.time() - start) / 60:.1f} min", flush=True)
