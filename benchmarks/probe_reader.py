"""Probe: the language half of the slot model trained from nothing over ground-truth slots, reading people's wording.

A fresh tokenizer (built from the wording grammar), a fresh sparse-MoE core, the text adapter, the slot pooler and
the slot reasoner learn together from scenes drawn on the fly (no pixels): the reader's parse targets, the relation
scorer, the match loss through the soft logic and the pooler's contrastive loss. Texts are worded as people type
them (``mmodal.shapes.wording``) with the targets of their meaning. Every ``--every`` steps it measures, on a test
split's scene graphs, the reasoner's P@10 per query kind and structure, and on the paraphrase set the worded and
grammar P@10 (ground-truth slots: perception taken out).

    python benchmarks/probe_reader.py --data data/even-test-n1000 --minutes 25
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmodal.data.dataset import read_dataset
from mmodal.encoders.language import MoEConfig, MoELanguageModel, TextConfig
from mmodal.encoders.slots import SlotLayout
from mmodal.encoders.tokenizer import build_tokenizer
from mmodal.evaluate_search import precision_at_10
from mmodal.fusion.adapters import Adapter, SlotPooler
from mmodal.fusion.reasoner import PART_KINDS, ReasonerConfig, SlotReasoner, parse_loss
from mmodal.kernels.contrastive import multi_positive_nce
from mmodal.paraphrase_eval import read_paraphrases
from mmodal.shapes import question_sampling, wording, world
from mmodal.shapes.scene import COLORS, RELATIONS, SHAPES, SIZES
from mmodal.shapes.semantics import parse_statement
from mmodal.training.slot_batches import TEXT_KINDS, draw_foil, draw_statement
from mmodal.training.slots import ground_truth_slots, parse_targets, relation_targets

ATTRIBUTES = {"color": tuple(COLORS), "shape": SHAPES, "size": SIZES}
MAX_SLOTS = 6


def corpus(rng: np.random.Generator, n: int) -> list[str]:
    texts = []
    for _ in range(n):
        s = world.any_statement(rng, "train")
        q = question_sampling.any_question(rng, "train")
        texts += [s.text(), wording.word_statement(s, rng).text, q.text(), wording.word_question(q, rng).text]
    return texts


class Probe(torch.nn.Module):
    def __init__(self, tokenizer, hidden: int = 128):
        super().__init__()
        self.tokenizer = tokenizer
        t = TextConfig(hidden_size=hidden)
        self.core = MoELanguageModel(
            MoEConfig.from_sizes(
                t,
                len(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
        self.adapter = Adapter(hidden, 128)
        self.layout = SlotLayout(ATTRIBUTES)
        self.pooler = SlotPooler(self.layout.width, 128)
        self.reasoner = SlotReasoner(ReasonerConfig(attributes=ATTRIBUTES, relations=RELATIONS), hidden)
        self.logit_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def read(self, texts: list[str]):
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        out = self.core(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], causal=False)
        return out.hidden_states, enc["attention_mask"], out.aux_loss


def losses(probe: Probe, rng: np.random.Generator, batch: int, readings: int, worded_share: float) -> dict:
    scenes = [world.sample_scene(rng, "train") for _ in range(batch)]
    slots = torch.stack([ground_truth_slots(s, probe.layout, MAX_SLOTS, rng, 0.3) for s in scenes])
    statements = [draw_statement(s, rng, TEXT_KINDS) for s in scenes]
    statements += [f for f in (draw_foil(s, rng) for s in scenes[: batch // 2]) if f is not None]
    extra = [world.any_statement(rng, "train") for _ in range(readings)]
    texts, meanings = [], []
    for s in statements + extra:
        if rng.random() < worded_share:
            w = wording.word_statement(s, rng)
            texts.append(w.text)
            meanings.append(w.meaning)
        else:
            texts.append(s.text())
            meanings.append(s)
    tokens, mask, aux = probe.read(texts)
    n = len(statements)
    text_emb = probe.adapter(tokens[:n], mask[:n])
    reasoner = probe.reasoner
    logits = reasoner.reader(tokens, mask)
    targets = parse_targets(meanings, reasoner.config)
    out = {"parse": parse_loss(logits, targets), "aux": aux}
    positions, labels = relation_targets(scenes, RELATIONS)
    if len(positions):
        out["relation"] = F.binary_cross_entropy_with_logits(reasoner.relation_scorer(positions)[:, 0, 1], labels)
    holds = torch.tensor([[m.holds(sc) for sc in scenes] for m in meanings[:n]], dtype=torch.float32)
    related = torch.sigmoid(reasoner.relation_scorer(slots[..., reasoner.layout.position]))
    match = 0.0
    for t in range(n):
        kinds = [PART_KINDS[k] for k in targets["kind"][t].tolist()]
        parse = reasoner.parse_from_logits(logits, t, kinds)
        p = reasoner.decide(parse, slots, related).probability.clamp(1e-5, 1 - 1e-5)
        match = match + F.binary_cross_entropy(p, holds[t])
    out["match"] = match / n
    image_emb = probe.pooler(slots)
    sim = probe.logit_scale.exp().clamp(max=100) * image_emb @ text_emb.t()
    positives = holds.t().bool()
    out["pool"] = 0.5 * (
        multi_positive_nce(sim, positives) + multi_positive_nce(sim[:, :batch].t(), positives[:, :batch].t())
    )
    return out


@torch.no_grad()
def measure(probe: Probe, dataset, search_pairs) -> dict:
    probe.eval()
    rng = np.random.default_rng(0)
    truth = torch.stack([ground_truth_slots(r.scene, probe.layout, MAX_SLOTS, rng) for r in dataset.images])
    scenes = [r.scene for r in dataset.images]

    def rank(texts: list[str]) -> list[np.ndarray]:
        rankings = []
        for start in range(0, len(texts), 128):
            chunk = texts[start : start + 128]
            tokens, mask, _ = probe.read(chunk)
            for parse in probe.reasoner.read(tokens, mask):
                p = probe.reasoner.decide(parse, truth).probability.numpy()
                rankings.append(np.argsort(-p, kind="stable"))
        return rankings

    index_of = {r.id: i for i, r in enumerate(dataset.images)}
    queries = dataset.queries
    per_kind, per_structure = defaultdict(list), defaultdict(list)
    for q, ranking in zip(queries, rank([q.text for q in queries])):
        p10 = precision_at_10(ranking, {index_of[i] for i in q.relevant})
        per_kind[q.kind].append(p10)
        per_kind["all"].append(p10)
        per_structure[parse_statement(q.text).structure].append(p10)
    worded, grammar = [], []
    pairs = [(p, {i for i, s in enumerate(scenes) if parse_statement(p.meaning).holds(s)}) for p in search_pairs]
    pairs = [(p, rel) for p, rel in pairs if rel]
    r_text = rank([p.text for p, _ in pairs])
    r_meaning = rank([p.meaning for p, _ in pairs])
    for (_, rel), a, b in zip(pairs, r_text, r_meaning):
        worded.append(precision_at_10(a, rel))
        grammar.append(precision_at_10(b, rel))
    probe.train()
    structures = {k: float(np.mean(v)) for k, v in per_structure.items()}
    return {
        "kinds": {k: round(float(np.mean(v)), 4) for k, v in sorted(per_kind.items())},
        "structures_below_0.95": sum(v < 0.95 for v in structures.values()),
        "structures": len(structures),
        "worst_structures": sorted(structures.items(), key=lambda kv: kv[1])[:6],
        "paraphrase_worded": round(float(np.mean(worded)), 4),
        "paraphrase_grammar": round(float(np.mean(grammar)), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a Shapes test split (scene graphs and queries)")
    parser.add_argument("--paraphrases", default="benchmarks/paraphrases")
    parser.add_argument("--minutes", type=float, default=25)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--readings", type=int, default=64)
    parser.add_argument("--worded-share", type=float, default=0.7)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default="runs/probe_reader.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tokenizer = build_tokenizer(corpus(np.random.default_rng(1), 20000), vocab_size=512)
    probe = Probe(tokenizer)
    dataset = read_dataset(args.data)
    search_pairs, _ = read_paraphrases(args.paraphrases)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=args.lr, weight_decay=0.01)
    start, step, log = time.time(), 0, []
    while time.time() - start < args.minutes * 60:
        out = losses(probe, rng, args.batch, args.readings, args.worded_share)
        loss = sum(out.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(probe.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 50 == 0:
            print(step, f"{time.time() - start:.0f}s", {k: round(float(v), 4) for k, v in out.items()}, flush=True)
        if step % args.every == 0:
            result = {"step": step, "seconds": round(time.time() - start), **measure(probe, dataset, search_pairs)}
            print(json.dumps(result), flush=True)
            log.append(result)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(log, indent=1))
    result = {"step": step, "seconds": round(time.time() - start), **measure(probe, dataset, search_pairs)}
    print(json.dumps(result), flush=True)
    log.append(result)
    Path(args.out).write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
