"""Triton kernels for the hot paths, each with a plain-torch reference (:mod:`mmodal.kernels.dispatch` picks one).

Each op reads in one place, in the order kernel(s) → launcher → autograd Function → reference → public function:

- :mod:`mmodal.kernels.layer_norm_gelu`: LayerNorm → Linear → GELU (the slot pooler's head, the modal-attention MLPs);
- :mod:`mmodal.kernels.attention`: masked attention over short padded sequences (the language core, modal attention):
  ``tiles`` (the blocks both directions share), ``forward``, ``backward``, then ``op`` (Function, reference and
  the public functions);
- :mod:`mmodal.kernels.moe`: the core's routed experts as a pipeline, a module a step: ``gating`` (top-k gating),
  ``layout`` (rows grouped by expert), ``permute`` (tokens into those rows and back), ``grouped_matmul`` (each
  row tile times its expert's matrix), and ``experts``, which runs them in order;
- :mod:`mmodal.kernels.contrastive`: InfoNCE both ways without the full softmax, with hard negatives (training):
  ``forward``, ``backward``, then ``loss`` (Function, reference and the public function).

:mod:`mmodal.kernels.dispatch` picks the implementation and gives every module ``triton`` and ``tl`` (stand-ins where
Triton is not installed, so that the package imports everywhere); :mod:`mmodal.kernels.launch` holds what the ops share:
argument checks, block sizes and the launch device, and inside kernels ``tl.dot`` at the operands' precision and a
program's block of indices.

Triton runs on CUDA tensors; elsewhere the reference runs. ``MMODAL_KERNELS=torch`` forces the references,
``MMODAL_KERNELS=triton`` the kernels (on CPU under ``TRITON_INTERPRET=1``, as the tests run them).
"""
