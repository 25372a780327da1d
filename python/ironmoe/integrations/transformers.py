"""Hugging Face transformers (5.x) integration: an ``"ironmoe"`` experts implementation.

transformers dispatches the forward of every experts module decorated with
``use_experts_implementation`` (Qwen3-MoE, Mixtral, DeepSeek-V3, ...) through
``transformers.integrations.moe.ExpertsInterface``. ``register()`` adds ``"ironmoe"`` there, so::

    import ironmoe.integrations.transformers as ironmoe_hf
    ironmoe_hf.register()
    model = AutoModelForCausalLM.from_config(config, experts_implementation="ironmoe")

runs the experts of every MoE layer with ``torch.ops.ironmoe.fused_experts``: the module's own
``gate_up_proj [E, 2I, H]`` (gate rows, then up rows) and ``down_proj [E, H, I]``, no copies. An
experts module this cannot run exactly (biases, transposed or interleaved weights, a custom
gate, a post-expert norm, an activation other than SiLU or exact GELU, or dtypes and devices
this build does not support), or whose call wants gradients (grad mode on and an input or expert
weight that requires grad: ironmoe's ops are inference-only), runs transformers' own
``batched_mm`` implementation instead, with one warning saying why.
"""

import logging

import torch

import ironmoe

logger = logging.getLogger(__name__)

NAME = "ironmoe"
_warned = set()


def _activation_name(act_fn):
    name = type(act_fn).__name__
    if name in ("SiLUActivation", "SiLU"):
        return "silu"
    if name == "GELUActivation" or (name == "GELU" and getattr(act_fn, "approximate", "none") ==
                                    "none"):
        return "gelu"
    return None


def _unsupported_reason(module, hidden_states, top_k_weights):
    from transformers.integrations.moe import _default_apply_gate

    if not getattr(module, "has_gate", True):
        return "experts without a gate projection"
    if getattr(module, "has_bias", False):
        return "expert biases"
    if getattr(module, "is_transposed", False):
        return "transposed expert weights"
    if not getattr(module, "is_concatenated", True):
        return "interleaved gate/up weights"
    if getattr(module, "has_post_expert_norm", False):
        return "a post-expert norm"
    if getattr(type(module), "_apply_gate", _default_apply_gate) is not _default_apply_gate:
        return "a custom gating function"
    if _activation_name(module.act_fn) is None:
        return f"the activation {type(module.act_fn).__name__}"
    device = hidden_states.device.type
    if device == "cuda" and not ironmoe.cuda_enabled():
        return f"tensors on {hidden_states.device} (this build of ironmoe runs on the CPU)"
    if device not in ("cpu", "cuda"):
        return f"tensors on {hidden_states.device}"
    if hidden_states.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"dtype {hidden_states.dtype}"
    if device == "cpu" and hidden_states.dtype == torch.float16:
        return "torch.float16 on the CPU (ironmoe's CPU backend runs float32 and bfloat16)"
    if module.gate_up_proj.dtype != hidden_states.dtype:
        return f"weights in {module.gate_up_proj.dtype} for activations in {hidden_states.dtype}"
    if torch.is_grad_enabled() and any(
            t.requires_grad for t in (hidden_states, top_k_weights, module.gate_up_proj,
                                      module.down_proj)):
        return "inputs that require grad (ironmoe's ops are inference-only: no gradients)"
    return None


def ironmoe_experts_forward(module, hidden_states, top_k_index, top_k_weights):
    """The ``ExpertsInterface`` forward: ``(module, hidden_states [T, H], top_k_index [T, k],
    top_k_weights [T, k]) -> [T, H]``."""
    reason = _unsupported_reason(module, hidden_states, top_k_weights)
    if reason is not None:
        from transformers.integrations.moe import batched_mm_experts_forward

        key = (type(module).__name__, reason)
        if key not in _warned:
            _warned.add(key)
            logger.warning("ironmoe: %s has %s; running transformers' batched_mm experts instead",
                           type(module).__name__, reason)
        return batched_mm_experts_forward(module, hidden_states, top_k_index, top_k_weights)
    shape = hidden_states.shape
    out = ironmoe.fused_experts(hidden_states.reshape(-1, shape[-1]), module.gate_up_proj,
                               module.down_proj, top_k_weights.reshape(-1, top_k_index.shape[-1])
                               .float(), top_k_index.reshape(-1, top_k_index.shape[-1]),
                               activation=_activation_name(module.act_fn))
    return out.reshape(shape)


def register(name: str = NAME) -> None:
    """Adds ironmoe to transformers' registry of experts implementations under ``name``."""
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(name, ironmoe_experts_forward)
