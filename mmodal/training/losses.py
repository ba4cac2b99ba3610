"""Training objectives: multi-positive InfoNCE, one way or both."""

from __future__ import annotations

import torch


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
