"""Plain PyTorch references for the ironmoe ops (a loop over experts in float64) and random
problems, shared by the CPU and CUDA tests. The tolerance is relative to each token's largest
reference value: 1e-4 for float32 (same products, another summation order); 2e-2 for bfloat16
and float16 (h and the output are rounded to the storage dtype)."""

import math

import torch

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}


def row_relative_error(out, ref):
    out, ref = out.double(), ref.double()
    scale = ref.abs().amax(dim=1).clamp_min(1e-30)
    return ((out - ref).abs().amax(dim=1) / scale).max().item() if out.numel() else 0.0


def reference_experts(x, w1, w2, weights, ids, activation="silu", expert_begin=0):
    """out[t] = sum_j w[t, j] * mlp_e(x[t]), e = ids[t, j] - expert_begin when local, in float64."""
    x64, w1_64, w2_64 = x.double(), w1.double(), w2.double()
    inter = w2.shape[2]
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j]) - expert_begin
            if e < 0 or e >= w1.shape[0]:
                continue
            gate = x64[t] @ w1_64[e, :inter].T
            up = x64[t] @ w1_64[e, inter:].T
            act = torch.nn.functional.silu(gate) if activation == "silu" else \
                torch.nn.functional.gelu(gate)
            h = (act * up).to(x.dtype).double()  # the library stores h in the storage dtype
            out[t] += float(weights[t, j]) * (h @ w2_64[e].T)
    return out


def random_problem(gen, tokens, hidden, inter, experts, dtype):
    x = torch.randn(tokens, hidden, generator=gen).to(dtype)
    w1 = (torch.randn(experts, 2 * inter, hidden, generator=gen) / math.sqrt(hidden)).to(dtype)
    w2 = (torch.randn(experts, hidden, inter, generator=gen) / math.sqrt(inter)).to(dtype)
    return x, w1, w2


def softmax_reference(logits, top_k, renormalize):
    probs = torch.softmax(logits.double(), dim=1)
    weights, ids = probs.topk(top_k, dim=1)
    if renormalize:
        weights = weights / weights.sum(dim=1, keepdim=True)
    return weights, ids
