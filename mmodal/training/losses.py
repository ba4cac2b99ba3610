"""Training objectives: multi-positive InfoNCE, hardest-negative selection for the matcher, patch loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def multi_positive_nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log(sum of positive probabilities); rows without a positive are skipped.

    logits (R, C) and positives (R, C) bool. With one positive per row this is plain InfoNCE.
    """
    has_positive = positives.any(dim=1)
    if not has_positive.any():
        return logits.new_zeros(())
    log_probs = logits.log_softmax(dim=1)
    positive_mass = torch.logsumexp(log_probs.masked_fill(~positives, float("-inf")), dim=1)
    return -positive_mass[has_positive].mean()


def symmetric_nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Image→text and text→image multi-positive InfoNCE, averaged: logits and positives (B_img, B_txt)."""
    return 0.5 * (multi_positive_nce(logits, positives) + multi_positive_nce(logits.t(), positives.t()))


def hardest_negatives(similarity: torch.Tensor, positives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image its most similar non-matching text, and for each text its most similar non-matching image.

    Returns (text index per image, image index per text); -1 where a row has no negative.
    """
    masked = similarity.detach().masked_fill(positives, float("-inf"))
    text_for_image = masked.argmax(dim=1)
    image_for_text = masked.argmax(dim=0)
    text_for_image[~(~positives).any(dim=1)] = -1
    image_for_text[~(~positives).any(dim=0)] = -1
    return text_for_image, image_for_text


def patch_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of every attribute head over every grid cell: logits (B, N, K), targets (B, N)."""
    losses = [F.cross_entropy(logits[k].flatten(0, 1), targets[k].flatten()) for k in logits]
    return torch.stack(losses).mean()
