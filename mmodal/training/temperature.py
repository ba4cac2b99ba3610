"""The contrastive losses' learned temperature (CLIP's logit scale).

It belongs to training, not to the model: search ranks by cosine similarity, so a finished model carries no
temperature. A run's checkpoints keep its value so that a resumed run goes on where it stopped.
"""

from __future__ import annotations

import math

import torch
from torch import nn

INITIAL = 1 / 0.07
MAX_SCALE = 100.0


class Temperature(nn.Module):
    def __init__(self, initial: float = INITIAL):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(initial)))

    def scale(self) -> torch.Tensor:
        """The factor on cosine similarities, at most ``MAX_SCALE``."""
        return self.log_scale.exp().clamp(max=MAX_SCALE)
