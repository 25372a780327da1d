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


def distinct_ids(gen, tokens, experts, top_k):
    """[tokens, top_k] int32 ids, each row top_k distinct experts."""
    return torch.stack([torch.randperm(experts, generator=gen)[:top_k]
                        for _ in range(tokens)]).int()


# Rows 0-8 of the hostile-ids cases for 16 global experts of which a rank owns [4, 12): -1, >= E,
# remote and duplicated ids. Rows 3 and 8 hold no local expert.
HOSTILE_IDS = [[-1, 3, 4, 4], [16, 100, 11, 12], [5, 5, 5, 5], [0, 1, 2, 3], [11, 4, -7, 8],
               [6, 7, 8, 9], [4, 11, 4, 11], [2**30, -2**30, 6, 6], [12, 13, 14, 15]]


def hostile_logits():
    """[4, 16] router logits: all NaN, NaN in every even column, all -inf, all equal."""
    logits = torch.randn(4, 16)
    logits[0] = float("nan")
    logits[1, ::2] = float("nan")
    logits[2] = float("-inf")
    logits[3] = 1.0  # all equal: ties go to the lower index
    return logits


def check_hostile_routing(weights, ids):
    """The contract's results for route(hostile_logits(), 4), on CPU tensors."""
    assert torch.isfinite(weights).all()
    for row in ids:
        assert len(set(row.tolist())) == 4
    assert torch.equal(ids[0], torch.tensor([0, 1, 2, 3], dtype=torch.int32))
    assert torch.allclose(weights[0], torch.full((4,), 0.25))
    assert torch.all(ids[1] % 2 == 1)  # NaN ranks below every number
    assert torch.equal(ids[3], torch.tensor([0, 1, 2, 3], dtype=torch.int32))


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
