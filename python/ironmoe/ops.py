"""Typed wrappers and fake (meta) implementations of the torch.ops.ironmoe ops.

Conventions are vLLM's: ``w1`` is ``[E_local, 2I, H]`` (gate rows, then up rows), ``w2`` is
``[E_local, H, I]``, ids are global expert ids and ``expert_begin`` places the local experts in
``[expert_begin, expert_begin + E_local)``. The robustness contract of docs/contract.md holds:
NaN logits rank lowest, ids outside the local range contribute zero, duplicated ids are two
independent slots, every weight returned by ``route`` is finite.
"""

from typing import Optional, Tuple

import torch


def _check_one_device(op, anchor_name, anchor, **others):
    """Raises unless every tensor in ``others`` is on ``anchor``'s device.

    The fake implementations run for meta tensors, and the dispatcher picks them when any one
    argument is on the meta device: a CPU ``hidden_states`` with a meta ``w1`` would otherwise
    get an uninitialised CPU tensor back."""
    for name, tensor in others.items():
        if tensor is not None and tensor.device != anchor.device:
            raise RuntimeError(f"ironmoe::{op}: {name}: expected a tensor on {anchor.device} (the "
                               f"device of {anchor_name}), got one on {tensor.device}")


def _check_fused_experts_ranks(hidden_states, w1, w2, topk_ids):
    ranks = (hidden_states.dim(), w1.dim(), w2.dim(), topk_ids.dim())
    if ranks != (2, 3, 3, 2):
        raise RuntimeError("ironmoe::fused_experts: expected hidden_states [T, H], w1 [E, 2I, H], "
                           "w2 [E, H, I] and topk_ids [T, k]; got {}, {}, {} and {} "
                           "dimensions".format(*ranks))


def _check_fused_experts_shapes(hidden_states, w1, w2, topk_weights, topk_ids, out=None):
    """The shape and dtype checks of the real op that decide its output, for the fake kernels."""
    _check_fused_experts_ranks(hidden_states, w1, w2, topk_ids)
    tokens, hidden = hidden_states.shape
    experts, inter = w2.shape[0], w2.shape[2]
    expected = {"w1": (w1, (experts, 2 * inter, hidden)), "w2": (w2, (experts, hidden, inter)),
                "topk_weights": (topk_weights, (tokens, topk_ids.shape[1])),
                "topk_ids": (topk_ids, (tokens, topk_ids.shape[1]))}
    if out is not None:
        expected["out"] = (out, (tokens, hidden))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != tuple(shape):
            raise RuntimeError(f"ironmoe::fused_experts: {name}: expected shape {list(shape)}, "
                               f"got {list(tensor.shape)}")
    if hidden_states.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise RuntimeError("ironmoe::fused_experts: hidden_states: expected float32, bfloat16 or "
                           f"float16, got {hidden_states.dtype}")
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise RuntimeError(f"ironmoe::fused_experts: topk_ids: expected int32 or int64, got "
                           f"{topk_ids.dtype}")
    if topk_weights.dtype != torch.float32:
        raise RuntimeError(f"ironmoe::fused_experts: topk_weights: expected float32, got "
                           f"{topk_weights.dtype}")
    if out is not None and out.dtype != hidden_states.dtype:
        raise RuntimeError(f"ironmoe::fused_experts: out: expected {hidden_states.dtype} (the "
                           f"dtype of hidden_states), got {out.dtype}")


@torch.library.register_fake("ironmoe::route")
def _route_fake(router_logits, top_k, scoring="softmax", renormalize=True, correction_bias=None,
                num_groups=1, topk_groups=1, routed_scaling_factor=1.0):
    _check_one_device("route", "router_logits", router_logits, correction_bias=correction_bias)
    if router_logits.dim() != 2:
        raise RuntimeError("ironmoe::route: router_logits: expected a [T, E] tensor, got "
                           f"{router_logits.dim()} dimensions")
    max_k = min(router_logits.shape[1], 32)
    if not 1 <= top_k <= max_k:
        raise RuntimeError(f"ironmoe::route: top_k: expected a value in [1, {max_k}] "
                           f"(E = {router_logits.shape[1]}, at most 32), got {top_k}")
    tokens = router_logits.shape[0]
    weights = router_logits.new_empty((tokens, top_k), dtype=torch.float32)
    ids = router_logits.new_empty((tokens, top_k), dtype=torch.int32)
    return weights, ids


@torch.library.register_fake("ironmoe::fused_experts")
def _fused_experts_fake(hidden_states, w1, w2, topk_weights, topk_ids, activation="silu",
                        global_num_experts=-1, expert_begin=0, quant="none", w1_scale=None,
                        w2_scale=None, a1_scale=None, a2_scale=None):
    _check_fused_experts_shapes(hidden_states, w1, w2, topk_weights, topk_ids)
    _check_one_device("fused_experts", "hidden_states", hidden_states, w1=w1, w2=w2,
                      topk_weights=topk_weights, topk_ids=topk_ids, w1_scale=w1_scale,
                      w2_scale=w2_scale, a1_scale=a1_scale, a2_scale=a2_scale)
    return hidden_states.new_empty((hidden_states.shape[0], hidden_states.shape[-1]))


@torch.library.register_fake("ironmoe::fused_experts_out")
def _fused_experts_out_fake(hidden_states, w1, w2, topk_weights, topk_ids, activation,
                            global_num_experts, expert_begin, quant, w1_scale, w2_scale,
                            a1_scale, a2_scale, out):
    _check_fused_experts_shapes(hidden_states, w1, w2, topk_weights, topk_ids, out)
    _check_one_device("fused_experts", "hidden_states", hidden_states, w1=w1, w2=w2,
                      topk_weights=topk_weights, topk_ids=topk_ids, w1_scale=w1_scale,
                      w2_scale=w2_scale, a1_scale=a1_scale, a2_scale=a2_scale, out=out)
    return None


def cuda_enabled() -> bool:
    """Whether this build accepts CUDA tensors (built with nvcc against a PyTorch with CUDA).

    Without it, CUDA tensors raise a ``RuntimeError`` saying so."""
    return bool(torch.ops.ironmoe.cuda_enabled())


def route(router_logits: torch.Tensor, top_k: int, *, scoring: str = "softmax",
          renormalize: bool = True, correction_bias: Optional[torch.Tensor] = None,
          num_groups: int = 1, topk_groups: int = 1,
          routed_scaling_factor: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing of ``router_logits`` ``[T, E]``.

    ``scoring`` is ``"softmax"`` (Qwen3, Mixtral), ``"sigmoid"`` or ``"grouped"`` (DeepSeek-V3:
    sigmoid scores, ``correction_bias`` ``[E]`` used for selection only, the best
    ``topk_groups`` of ``num_groups`` groups first). Returns ``(topk_weights [T, k] float32,
    topk_ids [T, k] int32)``: k distinct experts per row, finite weights, ties to the lower id.
    """
    return torch.ops.ironmoe.route(router_logits, top_k, scoring, renormalize, correction_bias,
                                   num_groups, topk_groups, routed_scaling_factor)


def fused_experts(hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor, *,
                  activation: str = "silu", global_num_experts: int = -1,
                  expert_begin: int = 0, quant: str = "none",
                  w1_scale: Optional[torch.Tensor] = None, w2_scale: Optional[torch.Tensor] = None,
                  a1_scale: Optional[torch.Tensor] = None, a2_scale: Optional[torch.Tensor] = None,
                  out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The expert MLPs and the weighted combine for precomputed routing.

    ``out[t] = sum_j topk_weights[t, j] * (act(x[t] @ w1[e, :I].T) * (x[t] @ w1[e, I:].T)) @
    w2[e].T`` with ``e = topk_ids[t, j] - expert_begin``; slots whose id is not local add
    nothing. ``activation`` is ``"silu"`` or ``"gelu"``. ``global_num_experts`` (default: the
    local count) is E for expert parallelism. ``topk_ids`` may be int32 or int64. Pass ``out``
    (``[T, H]``, the dtype of ``hidden_states``) to write in place.

    FP8 experts: ``quant`` is ``"fp8_tensor"``, ``"fp8_channel"`` or ``"fp8_block"``, ``w1`` and
    ``w2`` are ``torch.float8_e4m3fn`` and ``w1_scale`` / ``w2_scale`` float32 in vLLM's shapes
    (``[E]``; ``[E, 2I]`` or ``[E, 2I, 1]`` and ``[E, H]`` or ``[E, H, 1]``; ``[E, ceil(2I/128),
    ceil(H/128)]`` and ``[E, ceil(H/128), ceil(I/128)]``). ``fp8_tensor`` takes optional static
    activation scales ``a1_scale`` / ``a2_scale`` (one float32 each); without them the scales are
    computed from the batch. Activations are quantised on the fly (docs/formats.md).

    Inference only: inputs that require grad get no gradient (PyTorch warns when ``backward()``
    passes through), and ``out=`` refuses them while grad mode is on.
    """
    if out is None:
        return torch.ops.ironmoe.fused_experts(hidden_states, w1, w2, topk_weights, topk_ids,
                                               activation, global_num_experts, expert_begin,
                                               quant, w1_scale, w2_scale, a1_scale, a2_scale)
    # An out with the lazy negation or conjugation bit is refused by the op itself (its Negative
    # and Conjugate kernels, python/src/torch_ops.cpp), eager and compiled alike.
    torch.ops.ironmoe.fused_experts_out(hidden_states, w1, w2, topk_weights, topk_ids,
                                        activation, global_num_experts, expert_begin, quant,
                                        w1_scale, w2_scale, a1_scale, a2_scale, out)
    return out


def fused_moe(hidden_states: torch.Tensor, router_logits: torch.Tensor, w1: torch.Tensor,
              w2: torch.Tensor, top_k: int, renormalize: bool = True, *,
              activation: str = "silu", scoring: str = "softmax",
              correction_bias: Optional[torch.Tensor] = None, num_groups: int = 1,
              topk_groups: int = 1, routed_scaling_factor: float = 1.0,
              global_num_experts: int = -1, expert_begin: int = 0,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Routing and experts in one call: ``route`` then ``fused_experts`` (see both)."""
    weights, ids = route(router_logits, top_k, scoring=scoring, renormalize=renormalize,
                         correction_bias=correction_bias, num_groups=num_groups,
                         topk_groups=topk_groups, routed_scaling_factor=routed_scaling_factor)
    return fused_experts(hidden_states, w1, w2, weights, ids, activation=activation,
                         global_num_experts=global_num_experts, expert_begin=expert_begin,
                         out=out)
