"""Probe: answers from object slots, with a classification head instead of the language core. The answer
reasoner's question reader over the frozen MoE core's tokens and its evidence through the shipped slot
reasoner's soft logic, with an answer head (two words) over the evidence; trained on noisy ground-truth slots,
scored on test questions on clean ground-truth and on predicted slots.

    python benchmarks/probe_answers.py 1500 data/shapes-test-n1000-seed4242 data/probe-test-seed7777
"""

import sys
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mmodal.data.dataset import read_dataset
from mmodal.model import MModalModel
from mmodal.shapes.scene import COLORS, SHAPES, SIZES
from mmodal.shapes.semantics import COUNT_WORDS, QUESTION_TYPES, normalize_answer, parse_question
from mmodal.training.questions import draw_questions, reading_targets
from mmodal.training.slots import IGNORE, ground_truth_slots

torch.manual_seed(0)
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 600
torch.set_num_threads(2)
model = MModalModel.from_pretrained("shapes").eval()
for p in model.parameters():
    p.requires_grad_(False)
answerer = model.answerer
layout, N = model.slot_encoder.layout, model.config.slots.max_slots
WORDS = ["<end>"] + sorted(set(COLORS) | set(SHAPES) | set(SIZES) | set(COUNT_WORDS) | {"yes", "no"})
head = nn.Sequential(
    nn.Linear(answerer.to_prefix[0].in_features, 256),
    nn.GELU(),
    nn.Linear(256, 256),
    nn.GELU(),
    nn.Linear(256, 2 * len(WORDS)),
)
reader = answerer.reader
for p in reader.parameters():
    p.requires_grad_(True)
params = list(reader.parameters()) + list(head.parameters())
opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


def answer_targets(answers):
    t = torch.zeros(len(answers), 2, dtype=torch.long)
    for i, ans in enumerate(answers):
        words = ans.split()
        t[i, 0] = WORDS.index(words[0])
        t[i, 1] = WORDS.index(words[1]) if len(words) > 1 else 0
    return t


def forward(questions, slots):
    ids, mask = model.tokenize([q.text() for q in questions])
    with torch.no_grad():
        tokens, _ = model.text_tokens(ids, mask)
    logits = answerer.read(tokens, mask)
    evidence = answerer.evidence(logits, slots, model.reasoner)
    return logits, head(evidence.features).view(len(questions), 2, len(WORDS))


train = read_dataset("data/shapes-train")
scenes = [r.scene for r in train.images]
rng = np.random.default_rng(1)
start = time.time()
reader.train()
for step in range(STEPS):
    batch = [scenes[int(i)] for i in rng.choice(len(scenes), 72, replace=False)]
    rows, questions, answers = draw_questions(batch, rng, step * len(batch))
    rows, questions, answers = rows[:64], questions[:64], answers[:64]
    slots = torch.stack([ground_truth_slots(batch[r], layout, N, rng, 0.3) for r in rows])
    lr = 1e-3 * min(1, (step + 1) / 50) * (0.5 * (1 + np.cos(np.pi * step / STEPS)))
    for g in opt.param_groups:
        g["lr"] = lr
    logits, out = forward(questions, slots)
    loss_answer = F.cross_entropy(out.flatten(0, 1), answer_targets(answers).flatten())
    targets = reading_targets(questions, model)
    loss_read = torch.stack(
        [F.cross_entropy(logits[k], v, ignore_index=IGNORE) for k, v in targets.items() if (v != IGNORE).any()]
    ).mean()
    loss = loss_answer + 0.5 * loss_read
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 100 == 0:
        print(
            f"step {step} answer {loss_answer.item():.3f} read {loss_read.item():.3f} {time.time() - start:.0f}s",
            flush=True,
        )
print(f"trained {STEPS} steps in {time.time() - start:.0f}s", flush=True)
reader.eval()

# ---- evaluation on the test splits

for split in sys.argv[2:] or ["data/shapes-test-n1000-seed4242"]:
    test = read_dataset(split)
    by_id = {r.id: r for r in test.images}
    records = test.questions
    pred_slots = {}
    ids = sorted({q.image_id for q in records})
    for i in range(0, len(ids), 64):
        chunk = ids[i : i + 64]
        pics = [Image.open(test.root / by_id[x].file).convert("RGB") for x in chunk]
        _, s = model.encode_image_slots(pics)
        for x, row in zip(chunk, s):
            pred_slots[x] = row
    erng = np.random.default_rng(0)
    for source in ("gt", "pred"):
        right, total = defaultdict(int), defaultdict(int)
        for i in range(0, len(records), 128):
            chunk = records[i : i + 128]
            questions = [parse_question(r.question) for r in chunk]
            if source == "gt":
                slots = torch.stack([ground_truth_slots(by_id[r.image_id].scene, layout, N, erng) for r in chunk])
            else:
                slots = torch.stack([pred_slots[r.image_id] for r in chunk])
            with torch.no_grad():
                _, out = forward(questions, slots)
            for r, q, w in zip(chunk, questions, out.argmax(-1).tolist()):
                answer = WORDS[w[0]] + ("" if w[1] == 0 else " " + WORDS[w[1]])
                right_answer = normalize_answer(answer) == normalize_answer(r.answer)
                for key in (r.type, "all") + (("held-out",) if q.held_out else ()):
                    right[key] += right_answer
                    total[key] += 1
        print(
            split,
            source,
            " ".join(f"{k} {right[k] / total[k]:.3f}" for k in ["all", *QUESTION_TYPES, "held-out"]),
            flush=True,
        )
