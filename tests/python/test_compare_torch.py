"""bench/compare_torch.py's PyTorch pipeline computes the same layer as ironmoe (a comparison
against a pipeline that computed something else would be meaningless)."""

import math
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))
import compare_torch  # noqa: E402

import ironmoe  # noqa: E402


def test_pipeline_matches_ironmoe():
    gen = torch.Generator().manual_seed(7)
    tokens, hidden, inter, experts, k = 23, 128, 64, 12, 3
    x = torch.randn(tokens, hidden, generator=gen).bfloat16()
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=gen) / math.sqrt(hidden)).bfloat16()
    w2 = (torch.randn(experts, hidden, inter, generator=gen) / math.sqrt(inter)).bfloat16()
    logits = torch.randn(tokens, experts, generator=gen)
    row = {"top_k": k, "routing": "softmax_topk", "renormalize": True,
           "routed_scaling_factor": 1.0}
    weights, ids = compare_torch.route(logits, row, None)
    ours_weights, ours_ids = ironmoe.route(logits, k)
    assert torch.equal(ids, ours_ids.long())
    assert torch.allclose(weights, ours_weights, rtol=1e-5, atol=1e-7)
    out = compare_torch.experts_pipeline(x, w13, w2, weights, ids).float()
    ref = ironmoe.fused_experts(x, w13, w2, weights, ids).float()
    error = ((out - ref).abs().amax(dim=1) / ref.abs().amax(dim=1)).max().item()
    assert error < 3e-2


def test_grouped_routing_matches_ironmoe():
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(17, 32, generator=gen)
    bias = torch.randn(32, generator=gen) * 0.1
    row = {"top_k": 4, "routing": "grouped_topk", "num_groups": 4, "topk_groups": 2,
           "renormalize": True, "routed_scaling_factor": 2.5}
    weights, ids = compare_torch.route(logits, row, bias)
    ours_weights, ours_ids = ironmoe.route(logits, 4, scoring="grouped", correction_bias=bias,
                                           num_groups=4, topk_groups=2, routed_scaling_factor=2.5)
    assert torch.equal(ids, ours_ids.long())
    assert torch.allclose(weights, ours_weights, rtol=1e-5, atol=1e-6)
