"""Symmetric multi-positive InfoNCE between two sets of embeddings, the towers' contrastive objective.

For ``rows`` (R, D), ``cols`` (C, D), a scalar ``scale`` and a boolean ``positives`` (R, C), the logits are
``s = scale * rows @ cols.T`` and the loss is ``0.5 * (row_nce + col_nce)``: ``row_nce`` is the mean, over the
rows with at least one positive, of ``-log(sum of the row's softmax mass on its positive columns)``, and
``col_nce`` the same down the columns. ``positives=None`` means the diagonal (R == C): plain CLIP InfoNCE.
Optionally each row's ``hard_negatives`` highest-logit non-positive columns come back as indices.

The Triton kernels never hold the (R, C) logits or softmax in memory: the forward pass streams column blocks
past each block of rows, keeping an online logsumexp over all columns and one over the positive columns (and a
running top-k of the negatives), then runs again with rows and columns swapped. Only those per-row and
per-column logsumexps are kept for the backward pass, which recomputes each logit tile to form its gradient.

Read in this order:

- :mod:`~mmodal.kernels.contrastive.forward`: the logit tile both passes compute, the forward kernel and its launcher;
- :mod:`~mmodal.kernels.contrastive.backward`: the backward kernel and its launcher;
- :mod:`~mmodal.kernels.contrastive.loss`: the autograd Function, the torch reference and :func:`contrastive_loss`.
"""

from mmodal.kernels.contrastive.forward import MAX_HARD_NEGATIVES
from mmodal.kernels.contrastive.loss import (
    ContrastiveOutput,
    contrastive_loss,
    contrastive_loss_reference,
    multi_positive_nce,
)
from mmodal.kernels.launch import KERNEL_DTYPES

__all__ = [
    "KERNEL_DTYPES",
    "MAX_HARD_NEGATIVES",
    "ContrastiveOutput",
    "contrastive_loss",
    "contrastive_loss_reference",
    "multi_positive_nce",
]
