"""ironmoe: a robust Mixture-of-Experts layer for LLM inference, as PyTorch ops.

Importing this package registers ``torch.ops.ironmoe.route``, ``torch.ops.ironmoe.fused_experts``
and ``torch.ops.ironmoe.fused_experts_out`` (with fake implementations, so they trace under
``torch.compile``); on CUDA tensors they run on PyTorch's current stream, so they can be captured
in CUDA graphs. The functions below are typed wrappers over them; the C++ library checks every
argument and its ``ironmoe::Error`` message arrives as a ``RuntimeError``.
"""

import pathlib

import torch

torch.ops.load_library(str(next(pathlib.Path(__file__).parent.glob("_ops*.so"))))

from ironmoe.ops import cuda_enabled, fused_experts, fused_moe, route  # noqa: E402

__all__ = ["route", "fused_experts", "fused_moe", "cuda_enabled"]
