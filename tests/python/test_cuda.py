"""torch.ops.ironmoe on CUDA tensors: the references of moe_reference.py (computed on the CPU in
float64) on fresh random inputs for every CUDA expert kernel family, the contract's hostile cases,
PyTorch's current stream, CUDA graph capture and replay, torch.compile with Inductor (and its
CUDA graphs), and clear errors for tensors on the wrong device.

These need a GPU and a package built with CUDA; elsewhere (the CI machine) they are reported as
skipped with the reason. scripts/device-check.sh runs them on the H100 (step python).
"""

import math

import pytest
import torch

import ironmoe
from moe_reference import (HOSTILE_IDS, TOLERANCE, check_hostile_routing, distinct_ids,
                           hostile_logits, random_problem, reference_experts, row_relative_error,
                           softmax_reference)

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and ironmoe.cuda_enabled()),
    reason="needs a CUDA GPU and ironmoe built with CUDA (nvcc and a PyTorch with CUDA)")

CUDA = torch.device("cuda")


def on_cuda(*tensors):
    return [t.to(CUDA) for t in tensors]


# (tokens, hidden, intermediate, experts, top_k). In bf16 the first two take the weight-streaming
# decode kernels (a few rows, many experts), the next two the Hopper grouped GEMM and the last,
# with H and I not multiples of 8, the CUDA-core fallback; float32 and float16 always take the
# CUDA-core kernels (docs/performance.md, "Which expert kernel runs").
SHAPES = [(1, 256, 128, 16, 4), (4, 512, 96, 64, 2), (37, 128, 96, 16, 4), (300, 256, 64, 8, 2),
          (6, 100, 36, 8, 2)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("activation", ["silu", "gelu"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_experts_matches_reference(gen, dtype, activation, shape):
    tokens, hidden, inter, experts, top_k = shape
    x, w1, w2 = random_problem(gen, tokens, hidden, inter, experts, dtype)
    ids = distinct_ids(gen, tokens, experts, top_k)
    weights = torch.rand(tokens, top_k, generator=gen)
    out = ironmoe.fused_experts(*on_cuda(x, w1, w2, weights, ids), activation=activation)
    assert out.device.type == "cuda" and out.dtype == dtype and out.shape == (tokens, hidden)
    ref = reference_experts(x, w1, w2, weights, ids, activation)
    assert row_relative_error(out.cpu(), ref) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hostile_ids_duplicates_and_expert_parallel_range(gen, dtype):
    # One more row in int64 beyond the shared cases: ids outside int32 are not local.
    x, w1, w2 = random_problem(gen, 10, 64, 48, 8, dtype)
    ids = torch.tensor(HOSTILE_IDS + [[2**40, 7, -(2**33), 10]], dtype=torch.int64)
    weights = torch.rand(10, 4, generator=gen)
    out = ironmoe.fused_experts(*on_cuda(x, w1, w2, weights, ids), global_num_experts=16,
                                expert_begin=4)
    ref = reference_experts(x, w1, w2, weights, ids.clamp(-1, 16), expert_begin=4)
    assert row_relative_error(out.cpu(), ref) <= TOLERANCE[dtype]
    assert torch.all(out[3] == 0) and torch.all(out[8] == 0)  # no local expert: exactly zero


def test_out_is_written_in_place_and_rows_may_be_strided(gen):
    x, w1, w2 = on_cuda(*random_problem(gen, 12, 64, 32, 8, torch.bfloat16))
    x_strided = torch.randn(12, 80, device=CUDA).to(torch.bfloat16)[:, :64]
    x_strided.copy_(x)
    ids, weights = on_cuda(distinct_ids(gen, 12, 8, 2), torch.rand(12, 2, generator=gen))
    out = torch.full((12, 64), float("nan"), dtype=torch.bfloat16, device=CUDA)
    returned = ironmoe.fused_experts(x_strided, w1, w2, weights, ids, out=out)
    assert returned.data_ptr() == out.data_ptr()
    assert torch.equal(out, ironmoe.fused_experts(x, w1, w2, weights, ids))


def test_zero_tokens_is_valid(gen):
    x, w1, w2 = on_cuda(*random_problem(gen, 0, 32, 16, 4, torch.bfloat16))
    out = ironmoe.fused_moe(x, torch.randn(0, 4, device=CUDA), w1, w2, top_k=2)
    assert out.shape == (0, 32) and out.device.type == "cuda"


@pytest.mark.parametrize("renormalize", [True, False])
def test_route_softmax_matches_reference(gen, renormalize):
    logits = torch.randn(70, 64, generator=gen) * 3
    weights, ids = ironmoe.route(logits.to(CUDA), 8, renormalize=renormalize)
    ref_weights, ref_ids = softmax_reference(logits, 8, renormalize)
    assert torch.equal(ids.cpu().long(), ref_ids)
    assert torch.allclose(weights.cpu().double(), ref_weights, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scoring, groups", [("sigmoid", 1), ("grouped", 8)])
def test_route_matches_the_cpu_backend(gen, scoring, groups):
    logits = torch.randn(70, 64, generator=gen)
    bias = torch.randn(64, generator=gen) * 0.1 if scoring == "grouped" else None
    kwargs = dict(scoring=scoring, num_groups=groups, topk_groups=min(groups, 4),
                  routed_scaling_factor=2.5)
    cpu_weights, cpu_ids = ironmoe.route(logits, 6, correction_bias=bias, **kwargs)
    weights, ids = ironmoe.route(logits.to(CUDA), 6,
                                 correction_bias=None if bias is None else bias.to(CUDA),
                                 **kwargs)
    assert torch.equal(ids.cpu(), cpu_ids)
    assert torch.allclose(weights.cpu(), cpu_weights, rtol=1e-5, atol=1e-6)


def test_route_nan_rows_give_distinct_experts_and_finite_weights():
    check_hostile_routing(*(t.cpu() for t in ironmoe.route(hostile_logits().to(CUDA), 4)))


def test_runs_on_the_current_stream(gen):
    x, w1, w2 = on_cuda(*random_problem(gen, 64, 256, 128, 16, torch.bfloat16))
    logits = torch.randn(64, 16, generator=gen).to(CUDA)
    expected = ironmoe.fused_moe(-x, logits, w1, w2, top_k=4)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # x changes on the side stream just before the op: the op must see the new values.
        x2 = x.clone()
        x2.mul_(-1.0)
        out = ironmoe.fused_moe(x2, logits, w1, w2, top_k=4)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("tokens", [1, 16, 300])
def test_cuda_graph_replay_matches_eager(gen, tokens):
    hidden, inter, experts, top_k = 256, 128, 32, 4
    x, w1, w2 = on_cuda(*random_problem(gen, tokens, hidden, inter, experts, torch.bfloat16))
    static_x = x.clone()
    static_logits = torch.randn(tokens, experts, generator=gen).to(CUDA)
    out = torch.empty_like(static_x)
    warmup = torch.cuda.Stream()  # PyTorch's recipe: run once on a side stream before capture
    warmup.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warmup):
        ironmoe.fused_moe(static_x, static_logits, w1, w2, top_k, out=out)
    torch.cuda.current_stream().wait_stream(warmup)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ironmoe.fused_moe(static_x, static_logits, w1, w2, top_k, out=out)
    for replay in range(3):
        new_x = (torch.randn(tokens, hidden, generator=gen) * (replay + 1)).to(torch.bfloat16)
        new_logits = torch.randn(tokens, experts, generator=gen)
        if replay == 2:
            new_logits[::2] = float("nan")  # padding rows: defined result inside the graph too
        static_x.copy_(new_x)
        static_logits.copy_(new_logits)
        out.fill_(float("nan"))
        graph.replay()
        expected = ironmoe.fused_moe(*on_cuda(new_x, new_logits), w1, w2, top_k)
        assert torch.equal(out, expected)  # the same T gives the same bits (contract D1)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_torch_compile_fullgraph_inductor(gen, mode):
    x, w1, w2 = on_cuda(*random_problem(gen, 24, 128, 64, 8, torch.bfloat16))

    def layer(x, logits):
        return ironmoe.fused_moe(torch.relu(x), logits, w1, w2, top_k=2) * 2.0

    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, mode=mode)
    for _ in range(3):  # reduce-overhead records its CUDA graph on a later call
        logits = torch.randn(24, 8, generator=gen).to(CUDA)
        assert torch.equal(compiled(x, logits).clone(), layer(x, logits))


def test_opcheck_on_cuda(gen):
    x, w1, w2 = on_cuda(*random_problem(gen, 6, 32, 16, 4, torch.float32))
    logits = torch.randn(6, 4, generator=gen).to(CUDA)
    weights, ids = ironmoe.route(logits, 2)
    torch.library.opcheck(torch.ops.ironmoe.route.default, (logits, 2))
    torch.library.opcheck(torch.ops.ironmoe.fused_experts.default, (x, w1, w2, weights, ids))
    out = torch.empty(6, 32, device=CUDA)
    torch.library.opcheck(torch.ops.ironmoe.fused_experts_out.default,
                          (x, w1, w2, weights, ids, "silu", -1, 0, "none", None, None,
                           None, None, out))


@pytest.mark.parametrize("moved, message", [
    ("w1", r"w13: expected a tensor on cuda:0, got one on cpu"),
    ("w2", r"w2: expected a tensor on cuda:0, got one on cpu"),
    ("ids", r"topk_ids: expected a tensor on cuda:0, got one on cpu"),
    ("weights", r"topk_weights: expected a tensor on cuda:0, got one on cpu"),
    ("out", r"out: expected a tensor on cuda:0, got one on cpu"),
])
def test_a_tensor_on_another_device_is_refused(gen, moved, message):
    tensors = dict(zip(["x", "w1", "w2"], on_cuda(*random_problem(gen, 5, 32, 16, 4,
                                                                   torch.bfloat16))))
    tensors["ids"], tensors["weights"] = on_cuda(distinct_ids(gen, 5, 4, 2),
                                                 torch.rand(5, 2, generator=gen))
    tensors["out"] = torch.empty(5, 32, dtype=torch.bfloat16, device=CUDA)
    tensors[moved] = tensors[moved].cpu()
    with pytest.raises(RuntimeError, match=message):
        ironmoe.fused_experts(tensors["x"], tensors["w1"], tensors["w2"], tensors["weights"],
                              tensors["ids"], out=tensors["out"])


def test_logits_and_bias_on_different_devices_are_refused(gen):
    logits = torch.randn(5, 16, generator=gen).to(CUDA)
    with pytest.raises(RuntimeError, match="correction_bias: expected a tensor on cuda:0"):
        ironmoe.route(logits, 2, scoring="grouped", correction_bias=torch.zeros(16),
                      num_groups=4, topk_groups=2)


def test_large_batch_matches_reference_on_sampled_rows(gen):
    # 2048 tokens of a qwen3-like layer (scaled down): checks a sample of rows against the
    # reference, so that the grouped GEMM's many-tile path is covered without a slow loop.
    tokens, hidden, inter, experts, top_k = 2048, 512, 256, 64, 8
    x, w1, w2 = random_problem(gen, tokens, hidden, inter, experts, torch.bfloat16)
    logits = torch.randn(tokens, experts, generator=gen)
    weights, ids = (t.cpu() for t in ironmoe.route(logits.to(CUDA), top_k))
    out = ironmoe.fused_experts(*on_cuda(x, w1, w2, weights, ids)).cpu()
    rows = torch.randperm(tokens, generator=gen)[:48].sort().values
    ref = reference_experts(x[rows], w1, w2, weights[rows], ids[rows])
    assert row_relative_error(out[rows], ref) <= TOLERANCE[torch.bfloat16]
    assert not math.isnan(out.float().sum().item())
