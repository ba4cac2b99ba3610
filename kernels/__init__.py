"""Triton kernels for the hot paths, each with a plain-torch reference and a dispatcher (:mod:`kernels.dispatch`).

- :mod:`kernels.layer_norm_gelu`: LayerNorm → Linear → GELU (the slot pooler's head, the modal-attention MLPs);
- :mod:`kernels.attention`: masked attention over short padded sequences (the language core, modal attention);
- :mod:`kernels.moe`: top-k gating, token permutation, grouped expert matmuls, weighted un-permute (the core's
  routed experts);
- :mod:`kernels.contrastive`: InfoNCE both ways without the full softmax, with hard negatives (training).

Triton runs on CUDA tensors; elsewhere the reference runs. ``MMODAL_KERNELS=torch`` forces the references,
``MMODAL_KERNELS=triton`` the kernels (on CPU under ``TRITON_INTERPRET=1``, as the tests run them).
"""
