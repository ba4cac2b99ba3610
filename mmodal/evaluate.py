"""Evaluation on a Shapes test split: every figure the spec asks for, gathered into one report: search (see
:mod:`mmodal.evaluate_search`), the detector per object, foils, speech (:mod:`mmodal.evaluate_speech`), VQA
(:mod:`mmodal.evaluate_questions`), paraphrases and MoE health."""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mmodal.data.dataset import Dataset
from mmodal.evaluate_questions import evaluate_vqa
from mmodal.evaluate_search import Ranker, ground_truth_search, recall_at, search_metrics, structure_metrics
from mmodal.evaluate_speech import speech_metrics
from mmodal.model import MModalModel
from mmodal.paraphrase_eval import read_paraphrases, score_questions, score_search
from mmodal.search import RERANK_TOP, Query

log = logging.getLogger(__name__)


def _chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.inference_mode()
def _image_features(model: MModalModel, dataset: Dataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every test image's embedding (N, D) and object slots (N, S, F), as the indexer computes them."""
    embeddings, slots = [], []
    for chunk in tqdm(list(_chunks(dataset.images, batch_size)), desc="images", unit="batch", leave=False):
        e, s = model.encode_image_slots([Image.open(dataset.image_path(r)) for r in chunk])
        embeddings.append(e)
        slots.append(s)
    return torch.cat(embeddings), torch.cat(slots)


@torch.inference_mode()
def _text_features(
    model: MModalModel, texts: list[str], batch_size: int, routed: list | None = None, entropies: list | None = None
):
    """Per chunk (tokens, mask, embeddings); appends each chunk's (layers, experts) routing counts to ``routed``
    and its router entropy (share of the maximum) to ``entropies``."""
    out = []
    for chunk in _chunks(texts, batch_size):
        ids, mask = model.tokenize(chunk)
        tokens, _ = model.text_tokens(ids, mask)
        out.append((tokens, mask, model.embed_text_tokens(tokens, mask)))
        if routed is not None:
            routed.append(torch.stack([s.tokens_per_expert for s in model.language.router_stats]))
        if entropies is not None:
            entropies.append(model.language.router_entropy())
    return out


@torch.inference_mode()
def evaluate(
    model: MModalModel,
    dataset: Dataset,
    batch_size: int = 128,
    rerank_top: int = RERANK_TOP,
    paraphrases: Path | None = None,
    ground_truth: bool = True,
) -> dict:
    """All of the spec's metrics for ``model`` on ``dataset`` (which needs queries; foils and audio when present).
    ``paraphrases`` is a paraphrase set's folder (see :mod:`mmodal.paraphrase_eval`) to score as well;
    ``ground_truth`` also ranks every query by the reasoner on every image's ground-truth slots (costly on a
    large gallery)."""
    if paraphrases is not None:
        search_pairs, question_pairs = read_paraphrases(paraphrases)
    model.eval()
    index_of = {r.id: i for i, r in enumerate(dataset.images)}
    image_emb, slots = _image_features(model, dataset, batch_size)
    texts = [q.text for q in dataset.queries]
    routed: list[torch.Tensor] = []
    entropies: list[float] = []
    _text_features(model, texts, batch_size, routed, entropies)
    with tempfile.TemporaryDirectory(prefix="mmodal-eval-") as folder:
        ranker = Ranker(model, dataset, image_emb, slots, Path(folder), rerank_top)
        try:
            embedding_rankings = [ranker.rank(Query(text=t), rerank=False) for t in _progress(texts, "search")]
            result = {
                "images": len(dataset.images),
                "queries": len(dataset.queries),
                "search": {"embedding": search_metrics(embedding_rankings, dataset, index_of)},
            }
            result["search"]["recall_at"] = recall_at(embedding_rankings, dataset, index_of)
            result["search"]["rerank_top"] = rerank_top
            typed = [ranker.rank(Query(text=t)) for t in _progress(texts, "re-rank")]
            result["search"]["reranked"] = search_metrics(typed, dataset, index_of)
            result["search"]["reranked_by_structure"] = structure_metrics(typed, dataset, index_of)
            if ground_truth and all(r.scene is not None for r in dataset.images):
                parses = [p for chunk in _chunks(texts, batch_size) for p in model.read_queries(chunk)]
                result["search"]["ground_truth_slots"] = ground_truth_search(model, dataset, parses, index_of)
                result["detector"] = _detector_metrics(model, dataset, slots)
            if paraphrases is not None:
                result["paraphrases"] = {
                    "search": score_search(
                        search_pairs, dataset, lambda t: ranker.rank(Query(text=t)), model.unknown_words
                    )
                }
            spoken = [q for q in dataset.queries if q.audio]
            if spoken:
                result["speech"] = speech_metrics(
                    model,
                    dataset,
                    spoken,
                    ranker.rank,
                    dict(zip(texts, typed)),
                    lambda rankings, queries: search_metrics(rankings, dataset, index_of, queries)["all"],
                )
        finally:
            ranker.close()
    if dataset.foils:
        result["foils"] = _foil_accuracy(model, dataset, image_emb, slots, index_of, batch_size)
    if dataset.questions:
        result["vqa"] = evaluate_vqa(model, dataset)
    if paraphrases is not None:

        def ask(pictures, questions):
            return [a.answer for a in model.ask(pictures, questions, alternatives=1)]

        result["paraphrases"]["questions"] = score_questions(question_pairs, dataset, ask, model.unknown_words)
    if model.config.text.n_routed_experts:
        counts = torch.stack(routed).sum(dim=0)  # (layers, experts)
        share = counts / counts.sum(dim=1, keepdim=True)
        result["moe"] = {
            "expert_share_per_layer": [[round(float(x), 4) for x in layer] for layer in share],
            "min_share_of_uniform": round(float(share.min() * share.shape[1]), 4),
            "router_entropy_of_max": round(float(np.mean(entropies)), 4),
        }
    return result


def _progress(items, what: str):
    return tqdm(items, desc=what, unit="query", leave=False)


def _detector_metrics(model: MModalModel, dataset: Dataset, slots: torch.Tensor) -> dict:
    """Per object of the scene graphs: found (a slot's centre within half its diameter), and each attribute right
    among the found, over all objects and over those of a held-out colour–shape pair; spurious slots per image."""
    from mmodal.shapes.scene import HELD_OUT_PAIRS

    layout = model.slot_encoder.layout
    spurious = 0
    found, right, total = defaultdict(int), defaultdict(int), defaultdict(int)
    for record, image_slots in zip(dataset.images, slots):
        present = image_slots[image_slots[:, 0] > 0].float().cpu()
        used: set[int] = set()
        for o in record.scene.objects:
            groups = ("", "held_out_") if (o.color, o.shape) in HELD_OUT_PAIRS else ("",)
            for g in groups:
                total[g] += 1
            if len(present) == 0:
                continue
            position = present[:, layout.position]
            distance = ((position[:, 0] - o.cx) ** 2 + (position[:, 1] - o.cy) ** 2).sqrt()
            distance[list(used)] = float("inf")
            best = int(distance.argmin())
            if distance[best] > o.d / 2:
                continue
            used.add(best)
            for g in groups:
                found[g] += 1
                for name, values in layout.attributes.items():
                    right[g + name] += values[int(present[best, layout.span(name)].argmax())] == getattr(o, name)
        spurious += len(present) - len(used)
    metrics = {}
    for g in sorted(total):
        metrics[f"{g}objects"] = total[g]
        metrics[f"{g}found"] = round(found[g] / max(1, total[g]), 4)
        metrics.update({g + name: round(right[g + name] / max(1, found[g]), 4) for name in layout.attributes})
    metrics["spurious_per_image"] = round(spurious / max(1, len(dataset.images)), 4)
    return metrics


def _foil_accuracy(model, dataset, image_emb, slots, index_of, batch_size) -> dict:
    """How often the true caption beats its foil: by embedding similarity, and by the reasoner."""
    correct: dict[str, dict[str, list[bool]]] = defaultdict(lambda: {"embedding": [], "reranked": []})
    for chunk in _chunks(dataset.foils, batch_size):
        rows = torch.tensor([index_of[f.image_id] for f in chunk])
        emb = _text_features(model, [f.caption for f in chunk] + [f.foil for f in chunk], 2 * len(chunk))[0][2]
        n = len(chunk)
        true_sim = (image_emb[rows] * emb[:n]).sum(-1)
        foil_sim = (image_emb[rows] * emb[n:]).sum(-1)
        for f, e in zip(chunk, (true_sim > foil_sim).tolist()):
            correct[f.kind]["embedding"].append(e)
        parses = model.read_queries([f.caption for f in chunk] + [f.foil for f in chunk])
        for i, f in enumerate(chunk):
            image = slots[rows[i] : rows[i] + 1]
            true_p = model.decide(parses[i], image).probability
            foil_p = model.decide(parses[n + i], image).probability
            correct[f.kind]["reranked"].append(bool(true_p > foil_p))
    return {
        kind: {k: round(float(np.mean(v)), 4) for k, v in scores.items() if v} | {"n": len(scores["embedding"])}
        for kind, scores in sorted(correct.items())
    }
