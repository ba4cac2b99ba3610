"""Probe: can a small log-mel transformer (the audio tower's design, fresh) transcribe spoken Shapes queries
with a CTC head over the query words? Trains on train-split speech, scores word error rate on a test split
spoken in voices training never heard, by noise level.

    python benchmarks/probe_ctc.py MINUTES TEST_DIR TRAIN_DIR [TRAIN_DIR ...]
    (speech sets from `mmodal data shapes --n 400 --queries 2000 --speech --split train|test --seed S`)
"""

import sys
import time

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from encoders.audio import AudioEncoder, AudioEncoderConfig, preprocess_audio
from mmodal.data.dataset import read_dataset

torch.manual_seed(0)
torch.set_num_threads(2)
MINUTES = float(sys.argv[1])
test_dir, train_dirs = sys.argv[2], sys.argv[3:]


def clips(folder):
    dataset = read_dataset(folder)
    out = []
    for q in dataset.queries:
        wave, rate = soundfile.read(str(dataset.root / q.audio), dtype="float32")
        out.append((preprocess_audio(torch.from_numpy(wave), rate, 8.0), q.text.split(), q.voice))
    return out


train = [c for d in train_dirs for c in clips(d)]
test = clips(test_dir)
words = sorted({w for _, t, _ in train for w in t})
index = {w: i + 1 for i, w in enumerate(words)}  # 0 is the CTC blank
print(f"{len(train)} training clips, {len(test)} test clips, {len(words)} words", flush=True)

config = AudioEncoderConfig(width=192, num_layers=4, num_heads=4)
encoder = AudioEncoder(config)
head = nn.Linear(config.width, len(words) + 1)
params = list(encoder.parameters()) + list(head.parameters())
optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


def batch(items):
    lengths = torch.tensor([len(w) for w, _, _ in items])
    waves = torch.zeros(len(items), int(lengths.max()))
    for i, (w, _, _) in enumerate(items):
        waves[i, : len(w)] = w
    return waves, lengths


def log_probs(items):
    waves, lengths = batch(items)
    tokens, mask = encoder(waves, lengths)
    return head(tokens).log_softmax(-1), mask.sum(1)


rng = np.random.default_rng(0)
start, step = time.time(), 0
encoder.train()
while time.time() - start < MINUTES * 60:
    items = [train[int(i)] for i in rng.choice(len(train), 32, replace=False)]
    lp, token_lengths = log_probs(items)
    targets = torch.tensor([index[w] for _, t, _ in items for w in t])
    target_lengths = torch.tensor([len(t) for _, t, _ in items])
    warm = min(1.0, (step + 1) / 200)
    for g in optimizer.param_groups:
        g["lr"] = 1e-3 * warm
    loss = F.ctc_loss(lp.transpose(0, 1), targets, token_lengths, target_lengths, zero_infinity=True)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    step += 1
    if step % 100 == 0:
        print(f"step {step} ctc {loss.item():.3f} {time.time() - start:.0f}s", flush=True)
print(f"trained {step} steps in {(time.time() - start) / 60:.1f} min", flush=True)

encoder.eval()
errors, total = {}, {}
with torch.no_grad():
    for i in range(0, len(test), 64):
        items = test[i : i + 64]
        lp, token_lengths = log_probs(items)
        best = lp.argmax(-1)
        for b, (_, truth, voice) in enumerate(items):
            ids = best[b, : int(token_lengths[b])].tolist()
            heard = [words[k - 1] for j, k in enumerate(ids) if k and (j == 0 or ids[j - 1] != k)]
            level = (
                "snr < 15 dB" if voice["snr_db"] < 15 else "snr 15-22 dB" if voice["snr_db"] < 22 else "snr >= 22 dB"
            )
            for key in ("all", level):
                errors[key] = errors.get(key, 0) + torchaudio.functional.edit_distance(truth, heard)
                total[key] = total.get(key, 0) + len(truth)
for key in sorted(total):
    print(f"WER {key}: {errors[key] / total[key]:.4f} ({total[key]} words)", flush=True)
