"""Hard negatives mined from the model's own nearest neighbours, refreshed as training goes."""

from __future__ import annotations

import numpy as np
import torch

MINING_POOL = 2048  # images embedded at each refresh
NEIGHBOURS = 4


class NeighbourBank:
    """Pairs of training images that the current model embeds close together but whose scenes differ."""

    def __init__(self) -> None:
        self.pairs = np.zeros((0, 2), dtype=np.int64)

    @torch.no_grad()
    def refresh(self, embed, scenes: list, rng: np.random.Generator, batch_size: int = 256) -> None:
        """Embeds a random pool of training images with ``embed`` (indices → (n, D) tensor) and keeps each one's
        nearest neighbours whose scenes differ as pairs."""
        pool = rng.choice(len(scenes), size=min(MINING_POOL, len(scenes)), replace=False)
        embeddings = [
            embed(pool[start : start + batch_size]).float().cpu() for start in range(0, len(pool), batch_size)
        ]
        emb = torch.cat(embeddings)  # (P, D)
        similarity = emb @ emb.t()
        similarity.fill_diagonal_(float("-inf"))
        nearest = similarity.topk(min(NEIGHBOURS, len(pool) - 1), dim=1).indices.numpy()  # (P, k)
        pairs = [(pool[i], pool[j]) for i in range(len(pool)) for j in nearest[i] if scenes[pool[i]] != scenes[pool[j]]]
        self.pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Up to ``n`` mined pairs, flattened to image indices (both members of each pair)."""
        if len(self.pairs) == 0 or n <= 0:
            return np.zeros(0, dtype=np.int64)
        picks = rng.choice(len(self.pairs), size=min(n // 2, len(self.pairs)), replace=False)
        return self.pairs[picks].reshape(-1)
