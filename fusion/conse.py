"""ConSE (Norouzi et al., 2014, "Zero-shot learning by convex combination of semantic embeddings"): an image's
embedding is the probability-weighted mean of the text embeddings of its top-k classes, so that a classifier's
images and a sentence encoder's texts meet in the sentence encoder's space."""

from __future__ import annotations

import torch
from torch import nn

# How each class is described to the sentence encoder: its synonyms, each in these prompts, averaged.
CLASS_PROMPTS = ("a photo of a {}.", "a {}.", "a picture of a {}.", "{}")


def class_texts(synonyms: str, prompts: tuple[str, ...] = CLASS_PROMPTS) -> list[str]:
    """'tabby, tabby cat' → every prompt with every synonym."""
    names = [s.strip() for s in synonyms.split(",") if s.strip()] or [synonyms]
    return [prompt.format(name) for name in names for prompt in prompts]


class ConSEBridge(nn.Module):
    """Class logits (B, C) → L2-normalised convex combinations of the class embeddings (B, D)."""

    def __init__(self, num_classes: int, dim: int, top_k: int, temperature: float = 1.0):
        super().__init__()
        if top_k < 1 or temperature <= 0:
            raise ValueError(f"top_k must be at least 1 and temperature positive, got {top_k} and {temperature}")
        self.top_k = min(top_k, num_classes)
        self.temperature = temperature  # above 1, the runners-up weigh more: a softer reading of the classifier
        self.register_buffer("class_embeddings", torch.zeros(num_classes, dim))  # (C, D), L2-normalised rows

    def hubness(self, embeddings: torch.Tensor, neighbours: int = 50) -> torch.Tensor:
        """How near each image embedding (B, D) lies to texts in general: its mean cosine to the ``neighbours``
        nearest class embeddings, which stand in for the queries (CSLS, Lample et al., 2018). An image whose
        classifier is unsure mixes many classes and lies near everything; subtracting this keeps it from
        topping every search."""
        return (
            (embeddings.float() @ self.class_embeddings.T)
            .topk(min(neighbours, len(self.class_embeddings)), -1)
            .values.mean(-1)
        )

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        probabilities, classes = (logits.float() / self.temperature).softmax(-1).topk(self.top_k, dim=-1)  # (B, k)
        weights = probabilities / probabilities.sum(-1, keepdim=True)
        mixed = (weights.unsqueeze(-1) * self.class_embeddings[classes]).sum(1)
        return nn.functional.normalize(mixed, dim=-1)
