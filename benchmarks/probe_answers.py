"""Probe: answers from object slots, with a classification head instead of the language core. A question reader
over the frozen MoE core's tokens, the shipped slot reasoner's soft logic (frozen), an answer head over the
evidence; trained on noisy ground-truth slots, scored on test questions on clean ground-truth and on predicted
slots.

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

from fusion.reasoner import ANY, ROLES, exact_count
from mmodal.data.dataset import read_dataset
from mmodal.model import MModalModel
from mmodal.shapes.semantics import (
    COLORS,
    COUNT_WORDS,
    QUESTION_TYPES,
    RELATIONS,
    SHAPES,
    SIZES,
    normalize_answer,
    parse_question,
)
from mmodal.shapes.world import question_of_type
from mmodal.training.slots import ground_truth_slots, phrase_targets

torch.manual_seed(0)
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 600
torch.set_num_threads(2)
model = MModalModel.from_pretrained("shapes").eval()
for p in model.parameters():
    p.requires_grad_(False)
R = model.reasoner
layout, N = model.slot_encoder.layout, model.config.slots.max_slots
attrs = R.config.attributes
WORDS = ["<end>"] + sorted(set(COLORS) | set(SHAPES) | set(SIZES) | set(COUNT_WORDS) | {"yes", "no"})
W = 128


class QuestionReader(nn.Module):
    def __init__(self, text_dim):
        super().__init__()
        self.text_in = nn.Linear(text_dim, W)
        self.pos = nn.Parameter(torch.randn(1, 48, W) * 0.02)
        self.q = nn.Parameter(torch.randn(1, 1, W) * 0.02)
        enc = nn.TransformerEncoderLayer(W, 4, 4 * W, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(enc, 1, enable_nested_tensor=False)
        dec = nn.TransformerDecoderLayer(W, 4, 4 * W, dropout=0.0, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(dec, 2)
        self.norm = nn.LayerNorm(W)
        heads = {"qtype": len(QUESTION_TYPES), "relation": len(RELATIONS)}
        for role in ROLES:
            heads.update({f"{role}_{k}": len(v) + 1 for k, v in attrs.items()})
        self.heads = nn.ModuleDict({k: nn.Linear(W, n) for k, n in heads.items()})

    def forward(self, tokens, mask):
        t = tokens.shape[1]
        x = self.text_in(tokens) + self.pos[:, :t]
        pad = ~mask.bool()
        x = self.encoder(x, src_key_padding_mask=pad)
        h = self.norm(self.decoder(self.q.expand(len(x), -1, -1), x, memory_key_padding_mask=pad))[:, 0]
        return {k: head(h) for k, head in self.heads.items()}


def evidence(logits, slots):
    """Soft logic over slots → evidence features (B, E)."""
    pa = {k: logits[f"a_{k}"].softmax(-1) for k in attrs}
    pb = {k: logits[f"b_{k}"].softmax(-1) for k in attrs}
    pres = R.presence(slots)

    def match(phrase):
        m = pres
        for name, p in phrase.items():
            values = slots[..., layout.span(name)]
            m = m * (p[:, None, ANY] + (values * p[:, None, 1:]).sum(-1))
        return m

    a, b = match(pa), match(pb)  # (B, N)
    rel_all = torch.sigmoid(R.relation_scorer(slots[..., layout.position]).float())  # (B, N, N, R)
    rel = (rel_all * logits["relation"].softmax(-1)[:, None, None, :]).sum(-1)  # (B, N, N)
    eye = torch.eye(N, device=slots.device)
    rel = rel * (1 - eye)
    exist = 1 - torch.prod(1 - a, dim=1, keepdim=True)
    count = exact_count(a, 4)
    wa = a / a.sum(1, keepdim=True).clamp_min(1e-6)
    wb = b / b.sum(1, keepdim=True).clamp_min(1e-6)
    yes = torch.einsum("bi,bj,bij->b", wa, wb, rel).unsqueeze(1)
    wq = pres * torch.einsum("bj,bij->bi", wb, rel)
    wq = wq / wq.sum(1, keepdim=True).clamp_min(1e-6)

    def read(w):
        return torch.cat([torch.einsum("bn,bnv->bv", w, slots[..., layout.span(k)]) for k in attrs], -1)

    kind = logits["qtype"].softmax(-1)
    return torch.cat([kind, exist, count, yes, read(wa), read(wq)], -1)


reader = QuestionReader(model.config.text.hidden_size)
probe_dim = len(QUESTION_TYPES) + 1 + 5 + 1 + 2 * sum(len(v) for v in attrs.values())
head = nn.Sequential(
    nn.Linear(probe_dim, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 2 * len(WORDS))
)
params = list(reader.parameters()) + list(head.parameters())
opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


def answer_targets(answers):
    t = torch.zeros(len(answers), 2, dtype=torch.long)
    for i, ans in enumerate(answers):
        words = ans.split()
        t[i, 0] = WORDS.index(words[0])
        t[i, 1] = WORDS.index(words[1]) if len(words) > 1 else 0
    return t


def read_targets(qs):
    t = {"qtype": torch.tensor([QUESTION_TYPES.index(q.type) for q in qs])}
    t["relation"] = torch.tensor([RELATIONS.index(q.relation) if q.relation else -100 for q in qs])
    for role, get in (("a", lambda q: q.target), ("b", lambda q: q.other)):
        for k in attrs:
            vals = []
            for q in qs:
                ph = get(q)
                if ph is None and not (role == "a" and q.type == "query"):
                    vals.append(-100)
                else:
                    vals.append(phrase_targets(ph, attrs)[k] if ph is not None else 0)  # query's "a": any
            t[f"{role}_{k}"] = torch.tensor(vals)
    return t


def forward(qs, slots):
    ids, mask = model.tokenize([q.text() for q in qs])
    with torch.no_grad():
        tokens, _ = model.text_tokens(ids, mask)
    logits = reader(tokens, mask)
    out = head(evidence(logits, slots)).view(len(qs), 2, len(WORDS))
    return logits, out


train = read_dataset("data/shapes-train")
scenes = [r.scene for r in train.images]
rng = np.random.default_rng(1)
start = time.time()
for step in range(STEPS):
    qs, answers, ss = [], [], []
    while len(qs) < 64:
        sc = scenes[int(rng.integers(len(scenes)))]
        qtype = QUESTION_TYPES[len(qs) % len(QUESTION_TYPES)]
        q = question_of_type(qtype, sc, rng, "train")
        ans = q.answer(sc) if q else None
        if ans is None or q.held_out:
            continue
        qs.append(q), answers.append(ans), ss.append(ground_truth_slots(sc, layout, N, rng, 0.3))
    slots = torch.stack(ss)
    lr = 1e-3 * min(1, (step + 1) / 50) * (0.5 * (1 + np.cos(np.pi * step / STEPS)))
    for g in opt.param_groups:
        g["lr"] = lr
    logits, out = forward(qs, slots)
    tgt = answer_targets(answers)
    loss_answer = F.cross_entropy(out.flatten(0, 1), tgt.flatten())
    rt = read_targets(qs)
    loss_read = torch.stack(
        [F.cross_entropy(logits[k], v, ignore_index=-100) for k, v in rt.items() if (v != -100).any()]
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

# ---- evaluation on the test split

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
            qs = [parse_question(r.question) for r in chunk]
            if source == "gt":
                slots = torch.stack([ground_truth_slots(by_id[r.image_id].scene, layout, N, erng) for r in chunk])
            else:
                slots = torch.stack([pred_slots[r.image_id] for r in chunk])
            with torch.no_grad():
                _, out = forward(qs, slots)
            words = out.argmax(-1)
            for r, q, w in zip(chunk, qs, words.tolist()):
                ans = WORDS[w[0]] + ("" if w[1] == 0 else " " + WORDS[w[1]])
                ok = normalize_answer(ans) == normalize_answer(r.answer)
                for key in (r.type, "all") + (("held-out",) if q.held_out else ()):
                    right[key] += ok
                    total[key] += 1
        print(
            split,
            source,
            " ".join(f"{k} {right[k] / total[k]:.3f}" for k in ["all", *QUESTION_TYPES, "held-out"]),
            flush=True,
        )
