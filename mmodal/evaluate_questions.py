"""Question-answering figures on a Shapes test split: exact-match accuracy per question type, on seen and held-out
colour–shape pairs, and how well the model's confidence tells right answers from wrong ones."""

from __future__ import annotations

import numpy as np
from PIL import Image
from tqdm import tqdm

from mmodal.data.dataset import Dataset
from mmodal.model import MModalModel


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
    from mmodal.shapes.scene import SpecError
    from mmodal.shapes.semantics import normalize_answer, parse_question

    questions = dataset.questions
    if len(questions) > max_questions:  # an even spread keeps every type and image represented
        questions = [questions[i] for i in np.linspace(0, len(questions) - 1, max_questions).astype(int)]
    images = dataset.images_by_id()
    records = []
    batches = [questions[start : start + batch_size] for start in range(0, len(questions), batch_size)]
    for chunk in tqdm(batches, desc="vqa", unit="batch", leave=False):
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
