"""Evaluation on a Shapes test split: search P@10 and mAP per query kind (embedding, re-ranked, and the reasoner on
ground-truth slots), recall@K of the embedding, the detector per object, foils, speech, VQA and MoE health."""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from indexes.folders import open_index
from indexes.metadata import NewItem, present_slots
from mmodal.data.dataset import Dataset
from mmodal.evaluate_speech import speech_metrics
from mmodal.model import MModalModel
from mmodal.paraphrase_eval import read_paraphrases, score_questions, score_search
from mmodal.search import RERANK_TOP, Query, Searcher
from mmodal.shapes.semantics import SpecError, parse_statement

log = logging.getLogger(__name__)

RECALL_AT = (10, 50, 100, 200, 500)


def precision_at_10(ranking: np.ndarray, relevant: set[int]) -> float:
    """Relevant images in the top 10 over min(10, number relevant), as the spec defines it."""
    hits = sum(int(i) in relevant for i in ranking[:10])
    return hits / min(10, len(relevant))


def average_precision(ranking: np.ndarray, relevant: set[int]) -> float:
    hits, total = 0, 0.0
    for rank, index in enumerate(ranking, start=1):
        if int(index) in relevant:
            hits += 1
            total += hits / rank
    return total / len(relevant)


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


def _search_metrics(rankings: list[np.ndarray], dataset: Dataset, index_of: dict[str, int], queries=None) -> dict:
    """P@10 and mAP per query kind of ``rankings``, one per query of ``queries`` (by default all the dataset's)."""
    per_kind: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"p@10": [], "map": []})
    for query, ranking in zip(dataset.queries if queries is None else queries, rankings):
        relevant = {index_of[i] for i in query.relevant}
        for kind in [query.kind, "all"] if query.kind else ["all"]:
            per_kind[kind]["p@10"].append(precision_at_10(ranking, relevant))
            per_kind[kind]["map"].append(average_precision(ranking, relevant))
    return {
        kind: {
            "p@10": round(float(np.mean(v["p@10"])), 4),
            "map": round(float(np.mean(v["map"])), 4),
            "n": len(v["p@10"]),
        }
        for kind, v in sorted(per_kind.items())
    }


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
        ranker = _Ranker(model, dataset, image_emb, slots, Path(folder), rerank_top)
        try:
            embedding_rankings = [ranker.rank(Query(text=t), rerank=False) for t in _progress(texts, "search")]
            result = {
                "images": len(dataset.images),
                "queries": len(dataset.queries),
                "search": {"embedding": _search_metrics(embedding_rankings, dataset, index_of)},
            }
            result["search"]["recall_at"] = _recall_at(embedding_rankings, dataset, index_of)
            result["search"]["rerank_top"] = rerank_top
            typed = [ranker.rank(Query(text=t)) for t in _progress(texts, "re-rank")]
            result["search"]["reranked"] = _search_metrics(typed, dataset, index_of)
            result["search"]["reranked_by_structure"] = _structure_metrics(typed, dataset, index_of)
            if ground_truth and all(r.scene is not None for r in dataset.images):
                parses = [p for chunk in _chunks(texts, batch_size) for p in model.read_queries(chunk)]
                result["search"]["ground_truth_slots"] = _ground_truth_search(model, dataset, parses, index_of)
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
                    lambda rankings, queries: _search_metrics(rankings, dataset, index_of, queries)["all"],
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


def _structure_metrics(rankings: list[np.ndarray], dataset: Dataset, index_of: dict[str, int]) -> dict:
    """P@10 per phrase structure of the queries (their kind, and the form of each phrase in each position)."""
    per_structure: dict[str, list[float]] = defaultdict(list)
    for query, ranking in zip(dataset.queries, rankings):
        try:
            structure = parse_statement(query.text).structure
        except SpecError:
            continue
        per_structure[structure].append(precision_at_10(ranking, {index_of[i] for i in query.relevant}))
    return {s: {"p@10": round(float(np.mean(v)), 4), "n": len(v)} for s, v in sorted(per_structure.items())}


class _Ranker:
    """The test images in a real index (their vectors and present slots, as indexing stores them) and the
    Searcher that `mmodal search` uses over it, so the rankings measured are the ones users get."""

    def __init__(self, model, dataset: Dataset, image_emb, slots, folder: Path, rerank_top: int):
        sizes = [Image.open(dataset.image_path(r)).size for r in dataset.images]
        with open_index(folder, "w", model.identity) as writer:
            ids = writer.write_batch(
                [
                    NewItem(
                        path=str(dataset.image_path(r)),
                        content_hash=r.id,
                        size=0,
                        mtime_ns=0,
                        width=size[0],
                        height=size[1],
                        format=None,
                        vector=e.float().numpy(),
                        slots=present_slots(s.float().numpy()),
                    )
                    for r, size, e, s in zip(dataset.images, sizes, image_emb, slots)
                ]
            )
            writer.sync()
        self.row_of = {item_id: row for row, item_id in enumerate(ids)}
        self.index = open_index(folder, model=model.identity)
        self.searcher = Searcher(model, self.index)
        self.rerank_top = rerank_top
        self.n = len(ids)

    def rank(self, query: Query, rerank: bool = True) -> np.ndarray:
        """Every test image's row, best first."""
        hits = self.searcher.search(query, k=self.n, rerank=rerank, rerank_top=self.rerank_top)
        return np.array([self.row_of[hit.id] for hit in hits])

    def close(self) -> None:
        self.index.close()


def _progress(items, what: str):
    return tqdm(items, desc=what, unit="query", leave=False)


def _recall_at(rankings: list[np.ndarray], dataset: Dataset, index_of: dict[str, int]) -> dict:
    """Share of each query's relevant images that the embedding puts in its top K, per query kind."""
    per_kind: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for query, ranking in zip(dataset.queries, rankings):
        relevant = {index_of[i] for i in query.relevant}
        for kind in [query.kind, "all"] if query.kind else ["all"]:
            for k in RECALL_AT:
                per_kind[kind][k].append(len(relevant & set(ranking[:k].tolist())) / len(relevant))
    return {kind: {str(k): round(float(np.mean(v)), 4) for k, v in ks.items()} for kind, ks in sorted(per_kind.items())}


def _ground_truth_search(model: MModalModel, dataset: Dataset, parses, index_of: dict[str, int]) -> dict:
    """The reasoner alone: every query decided over every image's ground-truth slots (perception taken out)."""
    from mmodal.training.slots import ground_truth_slots

    rng = np.random.default_rng(0)
    layout = model.slot_encoder.layout
    truth = torch.stack(
        [ground_truth_slots(r.scene, layout, model.config.slots.max_slots, rng) for r in dataset.images]
    )
    rankings = []
    for parse in tqdm(parses, desc="ground-truth slots", unit="query", leave=False):
        probability = model.decide(parse, truth).probability.float().cpu().numpy()
        rankings.append(np.argsort(-probability, kind="stable"))
    return _search_metrics(rankings, dataset, index_of)


def _detector_metrics(model: MModalModel, dataset: Dataset, slots: torch.Tensor) -> dict:
    """Per object of the scene graphs: found (a slot's centre within half its diameter), and each attribute right
    among the found, over all objects and over those of a held-out colour–shape pair; spurious slots per image."""
    from mmodal.shapes.semantics import HELD_OUT_PAIRS

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


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Mean gap between confidence and accuracy over equal-width confidence bins, weighted by bin size."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidences, edges[1:-1]), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            gap += in_bin.mean() * abs(confidences[in_bin].mean() - correct[in_bin].mean())
    return float(gap)


def evaluate_vqa(model: MModalModel, dataset: Dataset, batch_size: int = 64, max_questions: int = 2000) -> dict:
    """Exact-match accuracy per question type, on seen and held-out colour–shape pairs, and calibration."""
    from mmodal.shapes.semantics import SpecError, normalize_answer, parse_question

    questions = dataset.questions
    if len(questions) > max_questions:  # an even spread keeps every type and image represented
        questions = [questions[i] for i in np.linspace(0, len(questions) - 1, max_questions).astype(int)]
    images = dataset.images_by_id()
    records = []
    for chunk in tqdm(list(_chunks(questions, batch_size)), desc="vqa", unit="batch", leave=False):
        pictures = [Image.open(dataset.image_path(images[q.image_id])) for q in chunk]
        for q, a in zip(chunk, model.ask(pictures, [q.question for q in chunk], alternatives=2)):
            try:
                held_out = parse_question(q.question).held_out
            except SpecError:
                held_out = False
            right = normalize_answer(a.answer) == normalize_answer(q.answer)
            records.append((q.type or "other", held_out, right, a.confidence))
    correct = np.array([r[2] for r in records], dtype=float)
    confidence = np.array([r[3] for r in records], dtype=float)
    result: dict = {"all": {"accuracy": round(float(correct.mean()), 4), "n": len(records)}}
    held_out = [r[2] for r in records if r[1]]
    if held_out:
        result["held_out_all"] = {"accuracy": round(float(np.mean(held_out)), 4), "n": len(held_out)}
    for qtype in sorted({r[0] for r in records}):
        rows = [r[2] for r in records if r[0] == qtype]
        result.setdefault("by_type", {})[qtype] = {"accuracy": round(float(np.mean(rows)), 4), "n": len(rows)}
    for split, held in (("seen", False), ("held_out", True)):
        for qtype in sorted({r[0] for r in records}):
            rows = [r[2] for r in records if r[0] == qtype and r[1] == held]
            if rows:
                result.setdefault(split, {})[qtype] = {"accuracy": round(float(np.mean(rows)), 4), "n": len(rows)}
    result["ece"] = round(expected_calibration_error(confidence, correct), 4)
    result["kept_by_confidence"] = accuracy_by_coverage(confidence, correct)
    return result


def accuracy_by_coverage(confidences: np.ndarray, correct: np.ndarray, shares=(1.0, 0.95, 0.9, 0.8, 0.5)) -> dict:
    """Accuracy of the answers kept when only the most confident share of them is kept: {"90%": …}."""
    order = np.argsort(-confidences, kind="stable")
    return {
        f"{share:.0%}": round(float(correct[order[: max(1, int(round(share * len(order))))]].mean()), 4)
        for share in shares
    }


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


def format_report(report: dict[str, dict]) -> str:
    """A readable table of several models' results, one column per model."""
    names = list(report)
    rows: list[tuple[str, list[str]]] = []
    first = report[names[0]]
    for stage in ("embedding", "reranked", "ground_truth_slots"):
        if any(stage not in r["search"] for r in report.values()):
            continue
        for kind in first["search"][stage]:
            rows.append(
                (f"search {stage} P@10 {kind}", [f"{r['search'][stage][kind]['p@10']:.3f}" for r in report.values()])
            )
        rows.append((f"search {stage} mAP all", [f"{r['search'][stage]['all']['map']:.3f}" for r in report.values()]))
    if all("reranked_by_structure" in r["search"] for r in report.values()):
        for structure in first["search"]["reranked_by_structure"]:
            values = [r["search"]["reranked_by_structure"].get(structure) for r in report.values()]
            rows.append(
                (
                    f"P@10 re-ranked, {structure}",
                    ["–" if v is None else f"{v['p@10']:.3f} (n={v['n']})" for v in values],
                )
            )
    for part in ("search", "questions"):
        if all(part in r.get("paraphrases", {}) for r in report.values()):
            for key in ("worded", "grammar"):
                rows.append(
                    (f"paraphrased {part}, {key}", [f"{r['paraphrases'][part][key]:.3f}" for r in report.values()])
                )
    if all("recall_at" in r["search"] for r in report.values()):
        for k in first["search"]["recall_at"]["all"]:
            rows.append(
                (f"embedding recall@{k} all", [f"{r['search']['recall_at']['all'][k]:.3f}" for r in report.values()])
            )
    if all("detector" in r for r in report.values()):
        for key in first["detector"]:
            rows.append((f"detector {key}", [f"{r['detector'].get(key, '–')}" for r in report.values()]))
    for kind in first.get("foils", {}):
        for stage in ("embedding", "reranked"):
            values = [r["foils"][kind].get(stage) for r in report.values()]
            rows.append((f"foil {kind} {stage}", ["–" if v is None else f"{v:.3f}" for v in values]))
    if "speech" in first:
        rows.append(("speech P@10", [f"{r['speech']['p@10']:.3f}" for r in report.values()]))
        rows.append(("speech P@10 typed", [f"{r['speech']['typed']['p@10']:.3f}" for r in report.values()]))
        rows.append(("speech P@10 by sound", [f"{r['speech']['sound']['p@10']:.3f}" for r in report.values()]))
        rows.append(("speech WER", [f"{r['speech'].get('wer', {}).get('all', '-')}" for r in report.values()]))
        for name in first["speech"].get("by_synthesizer", {}):
            for key, label in (("p@10", "P@10"), ("wer", "WER")):
                values = [r["speech"].get("by_synthesizer", {}).get(name, {}).get(key, "-") for r in report.values()]
                rows.append((f"speech {label}, {name}", [str(v["all"] if isinstance(v, dict) else v) for v in values]))
    if "vqa" in first:
        rows.append(("vqa accuracy all", [f"{r['vqa']['all']['accuracy']:.3f}" for r in report.values()]))
        held = [r["vqa"].get("held_out_all", {}).get("accuracy", float("nan")) for r in report.values()]
        rows.append(("vqa accuracy held-out pairs", [f"{v:.3f}" for v in held]))
        for split in ("by_type", "seen", "held_out"):
            for qtype in first["vqa"].get(split, {}):
                rows.append(
                    (
                        f"vqa {split} {qtype}",
                        [
                            f"{r['vqa'].get(split, {}).get(qtype, {}).get('accuracy', float('nan')):.3f}"
                            for r in report.values()
                        ],
                    )
                )
        rows.append(("vqa expected calibration error", [f"{r['vqa']['ece']:.3f}" for r in report.values()]))
        for share in first["vqa"].get("kept_by_confidence", {}):
            rows.append(
                (
                    f"vqa accuracy, most confident {share}",
                    [f"{r['vqa'].get('kept_by_confidence', {}).get(share, float('nan')):.3f}" for r in report.values()],
                )
            )
    moe = [r.get("moe") for r in report.values()]
    rows.append(("MoE min expert share / uniform", [f"{m['min_share_of_uniform']:.2f}" if m else "dense" for m in moe]))
    rows.append(("MoE router entropy / max", [f"{m['router_entropy_of_max']:.2f}" if m else "dense" for m in moe]))
    width = max(len(label) for label, _ in rows)
    header = " " * width + "  " + "  ".join(f"{n[-24:]:>24}" for n in names)
    return "\n".join(
        [header] + [f"{label:<{width}}  " + "  ".join(f"{v:>24}" for v in values) for label, values in rows]
    )
