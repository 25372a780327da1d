"""torch.ops.ironmoe against plain PyTorch references (a loop over experts), on fresh random
inputs, on the CPU, plus the contract's hostile cases, argument errors and tracing with the fake
kernels. moe_reference.py holds the references and their tolerances; test_cuda.py runs the same
checks on CUDA tensors.
"""

import math

import pytest
import torch

import ironmoe
from moe_reference import (HOSTILE_IDS, TOLERANCE, check_hostile_routing, distinct_ids,
                           hostile_logits, random_problem, reference_experts, row_relative_error,
                           softmax_reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", ["silu", "gelu"])
@pytest.mark.parametrize("shape", [(1, 64, 32, 8, 2), (37, 128, 96, 16, 4), (130, 96, 64, 6, 6)])
def test_fused_experts_matches_reference(gen, dtype, activation, shape):
    tokens, hidden, inter, experts, top_k = shape
    x, w1, w2 = random_problem(gen, tokens, hidden, inter, experts, dtype)
    ids = distinct_ids(gen, tokens, experts, top_k)
    weights = torch.rand(tokens, top_k, generator=gen)
    out = ironmoe.fused_experts(x, w1, w2, weights, ids, activation=activation)
    ref = reference_experts(x, w1, w2, weights, ids, activation)
    assert out.dtype == dtype and out.shape == (tokens, hidden)
    assert row_relative_error(out, ref) <= TOLERANCE[dtype]


def test_hostile_ids_duplicates_and_expert_parallel_range(gen):
    x, w1, w2 = random_problem(gen, 9, 64, 48, 8, torch.float32)
    ids = torch.tensor(HOSTILE_IDS, dtype=torch.int32)
    weights = torch.rand(9, 4, generator=gen)
    out = ironmoe.fused_experts(x, w1, w2, weights, ids, global_num_experts=16, expert_begin=4)
    ref = reference_experts(x, w1, w2, weights, ids, expert_begin=4)
    assert row_relative_error(out, ref) <= 1e-4
    assert torch.all(out[3] == 0) and torch.all(out[8] == 0)  # no local expert: exactly zero


def test_int64_ids_outside_int32_are_not_local(gen):
    x, w1, w2 = random_problem(gen, 3, 32, 16, 4, torch.float32)
    ids = torch.tensor([[2**40, 1], [-(2**40), 3], [2**31, 2**32 + 1]], dtype=torch.int64)
    weights = torch.rand(3, 2, generator=gen)
    out = ironmoe.fused_experts(x, w1, w2, weights, ids)
    ref = reference_experts(x, w1, w2, weights, torch.tensor([[-1, 1], [-1, 3], [-1, -1]]))
    assert row_relative_error(out, ref) <= 1e-4
    assert torch.all(out[2] == 0)


def test_out_is_written_in_place_and_rows_may_be_strided(gen):
    x, w1, w2 = random_problem(gen, 12, 64, 32, 8, torch.bfloat16)
    wide = torch.randn(12, 80).to(torch.bfloat16)
    x_strided = wide[:, :64]
    x_strided.copy_(x)
    ids = distinct_ids(gen, 12, 8, 2)
    weights = torch.rand(12, 2, generator=gen)
    out = torch.full((12, 64), float("nan"), dtype=torch.bfloat16)
    returned = ironmoe.fused_experts(x_strided, w1, w2, weights, ids, out=out)
    assert returned.data_ptr() == out.data_ptr()
    assert torch.equal(out, ironmoe.fused_experts(x, w1, w2, weights, ids))


def test_zero_tokens_is_valid(gen):
    x, w1, w2 = random_problem(gen, 0, 32, 16, 4, torch.float32)
    out = ironmoe.fused_moe(x, torch.randn(0, 4), w1, w2, top_k=2)
    assert out.shape == (0, 32)


@pytest.mark.parametrize("renormalize", [True, False])
def test_route_softmax_matches_reference(gen, renormalize):
    logits = torch.randn(50, 64, generator=gen) * 3
    weights, ids = ironmoe.route(logits, 8, renormalize=renormalize)
    ref_weights, ref_ids = softmax_reference(logits, 8, renormalize)
    assert torch.equal(ids.long(), ref_ids)
    assert torch.allclose(weights.double(), ref_weights, rtol=1e-5, atol=1e-7)


def test_route_grouped_matches_deepseek_reference(gen):
    tokens, experts, groups, keep, top_k, scale = 20, 64, 8, 4, 6, 2.5
    logits = torch.randn(tokens, experts, generator=gen)
    bias = torch.randn(experts, generator=gen) * 0.1
    weights, ids = ironmoe.route(logits, top_k, scoring="grouped", correction_bias=bias,
                                 num_groups=groups, topk_groups=keep,
                                 routed_scaling_factor=scale)
    scores = torch.sigmoid(logits.double())
    keys = scores + bias.double()
    group_scores = keys.view(tokens, groups, -1).topk(2, dim=2).values.sum(dim=2)
    kept = group_scores.topk(keep, dim=1).indices
    mask = torch.zeros(tokens, groups, dtype=torch.bool).scatter_(1, kept, True)
    masked = keys.masked_fill(~mask.repeat_interleave(experts // groups, dim=1), -math.inf)
    ref_ids = masked.topk(top_k, dim=1).indices
    ref_weights = scores.gather(1, ref_ids)
    ref_weights = ref_weights / ref_weights.sum(dim=1, keepdim=True) * scale
    assert torch.equal(ids.long(), ref_ids)
    assert torch.allclose(weights.double(), ref_weights, rtol=1e-5, atol=1e-6)


def test_route_nan_rows_give_distinct_experts_and_finite_weights():
    check_hostile_routing(*ironmoe.route(hostile_logits(), 4))


def test_fused_moe_is_route_then_fused_experts(gen):
    x, w1, w2 = random_problem(gen, 10, 64, 32, 8, torch.bfloat16)
    logits = torch.randn(10, 8, generator=gen)
    weights, ids = ironmoe.route(logits, 2)
    assert torch.equal(ironmoe.fused_moe(x, logits, w1, w2, top_k=2),
                       ironmoe.fused_experts(x, w1, w2, weights, ids))


@pytest.mark.parametrize("call, message", [
    (lambda x, w1, w2, w, i: ironmoe.fused_experts(x, w1[:, :10], w2, w, i), "w13"),
    (lambda x, w1, w2, w, i: ironmoe.fused_experts(x.double(), w1, w2, w, i), "hidden_states"),
    (lambda x, w1, w2, w, i: ironmoe.fused_experts(x, w1, w2, w[:, :1], i), "topk_weights"),
    (lambda x, w1, w2, w, i: ironmoe.fused_experts(x, w1, w2, w, i, activation="relu"),
     "activation"),
    (lambda x, w1, w2, w, i: ironmoe.fused_experts(x, w1.bfloat16(), w2, w, i), "w13"),
    (lambda x, w1, w2, w, i: ironmoe.route(w, 2, scoring="top"), "scoring"),
    # k is checked before the outputs are allocated: no negative size, no 2**40-column tensor.
    (lambda x, w1, w2, w, i: ironmoe.route(w, -1), r"top_k: expected a value in \[1, 2\]"),
    (lambda x, w1, w2, w, i: ironmoe.route(w, 2**40), "top_k"),
    (lambda x, w1, w2, w, i: ironmoe.route(w, 3), "top_k"),
    (lambda x, w1, w2, w, i: ironmoe.fused_experts(x[0, 0], w1, w2, w, i),
     r"hidden_states \[T, H\]"),
    (lambda x, w1, w2, w, i: ironmoe.fused_experts(
        x, w1.to(torch.float8_e4m3fn), w2.to(torch.float8_e4m3fn), w, i, quant="fp8_tensor",
        w1_scale=torch.ones(4), w2_scale=torch.ones(4), a1_scale=torch.ones(2)),
     "a1_scale: expected one value"),
    # One meta argument makes the dispatcher run the fake kernel: it must refuse the mix rather
    # than hand back an uninitialised CPU tensor.
    (lambda x, w1, w2, w, i: ironmoe.fused_experts(x, w1.to("meta"), w2, w, i),
     "w1: expected a tensor on cpu"),
    (lambda x, w1, w2, w, i: ironmoe.fused_experts(x, w1, w2, w, i,
                                                   out=torch.empty_like(x, device="meta")),
     "out: expected a tensor on cpu"),
    (lambda x, w1, w2, w, i: ironmoe.route(w, 1, scoring="grouped",
                                           correction_bias=torch.zeros(2, device="meta")),
     "correction_bias: expected a tensor on cpu"),
    # -1 is the default (the local count); other negative counts are errors, not the default.
    (lambda x, w1, w2, w, i: ironmoe.fused_experts(x, w1, w2, w, i, global_num_experts=-5),
     "global_num_experts: expected -1"),
    # A lazy-negation out cannot be written through (PyTorch's fallback asserts).
    (lambda x, w1, w2, w, i: ironmoe.fused_experts(x, w1, w2, w, i,
                                                   out=torch._neg_view(torch.empty_like(x))),
     "out.*negation"),
])
def test_bad_arguments_raise_with_the_argument_named(gen, call, message):
    x, w1, w2 = random_problem(gen, 4, 32, 16, 4, torch.float32)
    weights = torch.rand(4, 2, generator=gen)
    ids = torch.randint(0, 4, (4, 2), generator=gen, dtype=torch.int32)
    with pytest.raises(RuntimeError, match=message):
        call(x, w1, w2, weights, ids)


def test_registered_out_op_refuses_a_lazy_negation_out(gen):
    # The op itself, not only the Python wrapper: PyTorch's math-bits fallback would assert and
    # corrupt the heap writing back through such an out.
    x, w1, w2 = random_problem(gen, 4, 32, 16, 4, torch.float32)
    weights = torch.rand(4, 2, generator=gen)
    ids = torch.randint(0, 4, (4, 2), generator=gen, dtype=torch.int32)
    out = torch.zeros_like(x)
    with pytest.raises(RuntimeError, match="out: expected a tensor without the lazy negation"):
        torch.ops.ironmoe.fused_experts_out(x, w1, w2, weights, ids, "silu", -1, 0, "none", None,
                                            None, None, None, torch._neg_view(out))
    assert torch.equal(out, torch.zeros_like(x))


def test_out_bumps_the_version_counter(gen):
    x, w1, w2 = random_problem(gen, 4, 32, 16, 4, torch.float32)
    weights, ids = ironmoe.route(torch.randn(4, 4, generator=gen), 2)
    out = torch.empty_like(x)
    before = out._version
    ironmoe.fused_experts(x, w1, w2, weights, ids, out=out)
    assert out._version == before + 1
    with torch.inference_mode():
        # A normal tensor written under inference_mode is bumped too, as torch.add(out=) does.
        ironmoe.fused_experts(x, w1, w2, weights, ids, out=out)
        assert out._version == before + 2
        fresh = torch.empty_like(x)  # an inference tensor: no counter, and the call still works
        ironmoe.fused_experts(x, w1, w2, weights, ids, out=fresh)
        assert torch.equal(fresh, out)


def test_inputs_that_require_grad(gen):
    x, w1, w2 = random_problem(gen, 4, 32, 16, 4, torch.float32)
    w1.requires_grad_(True)
    logits = torch.randn(4, 4, generator=gen, requires_grad=True)
    weights, ids = ironmoe.route(logits, 2)
    expected = ironmoe.fused_experts(x, w1.detach(), w2, weights.detach(), ids)
    # The forward runs (a model evaluated without torch.no_grad()), in eager and compiled.
    assert torch.equal(ironmoe.fused_experts(x, w1, w2, weights, ids), expected)
    compiled = torch.compile(lambda x: ironmoe.fused_moe(x, logits, w1, w2, top_k=2),
                             fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), expected)
    # out= cannot carry a gradient: refused up front, as PyTorch's own out= functions do.
    with pytest.raises(RuntimeError, match="out= does not support automatic differentiation"):
        ironmoe.fused_experts(x, w1, w2, weights.detach(), ids, out=torch.zeros_like(x))
    with torch.no_grad():
        out = torch.zeros_like(x)
        ironmoe.fused_experts(x, w1, w2, weights, ids, out=out)
        assert torch.equal(out, expected)


def test_lazy_negation_inputs_are_read_negated(gen):
    x, w1, w2 = random_problem(gen, 6, 32, 16, 4, torch.float32)
    weights = torch.rand(6, 2, generator=gen)
    ids = distinct_ids(gen, 6, 4, 2)
    expected = ironmoe.fused_experts(-x, w1, w2, weights, ids)
    assert torch.equal(ironmoe.fused_experts(torch._neg_view(x), w1, w2, weights, ids), expected)
    out = torch.full_like(x, float("nan"))
    ironmoe.fused_experts(torch._neg_view(x), w1, w2, weights, ids, out=out)
    assert torch.equal(out, expected)
    logits = torch.randn(6, 4, generator=gen)
    assert all(torch.equal(a, b) for a, b in zip(ironmoe.route(torch._neg_view(logits), 2),
                                                  ironmoe.route(-logits, 2)))


def test_opcheck_schemas_and_fake_kernels(gen):
    x, w1, w2 = random_problem(gen, 6, 32, 16, 4, torch.float32)
    logits = torch.randn(6, 4, generator=gen)
    weights, ids = ironmoe.route(logits, 2)
    torch.library.opcheck(torch.ops.ironmoe.route.default, (logits, 2))
    torch.library.opcheck(torch.ops.ironmoe.fused_experts.default, (x, w1, w2, weights, ids))
    out = torch.empty(6, 32)
    torch.library.opcheck(torch.ops.ironmoe.fused_experts_out.default,
                          (x, w1, w2, weights, ids, "silu", -1, 0, "none", None, None,
                           None, None, out))


def test_fake_kernels_check_like_the_real_ones():
    # Meta tensors run the fake kernels: the same argument errors as on the CPU.
    logits = torch.empty(4, 6, device="meta")
    with pytest.raises(RuntimeError, match=r"top_k: expected a value in \[1, 6\]"):
        ironmoe.route(logits, 7)
    with pytest.raises(RuntimeError, match=r"hidden_states \[T, H\]"):
        ironmoe.fused_experts(torch.empty(8, device="meta"), torch.empty(2, 8, 4, device="meta"),
                              torch.empty(2, 4, 2, device="meta"),
                              torch.empty(8, 2, device="meta"),
                              torch.empty(8, 2, dtype=torch.int32, device="meta"))
    weights, ids = ironmoe.route(logits, 2)
    assert weights.shape == (4, 2) and ids.dtype == torch.int32


def test_out_refuses_forward_ad_inputs_like_pytorch_out_functions(gen):
    # PyTorch's own out= functions raise for dual (forward-AD) inputs; fused_experts_out ran and
    # left out without a tangent: a silently wrong Jacobian-vector product.
    import torch.autograd.forward_ad as fwAD

    x, w1, w2 = random_problem(gen, 4, 32, 16, 4, torch.float32)
    weights = torch.rand(4, 2, generator=gen)
    ids = distinct_ids(gen, 4, 4, 2)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.ones_like(x))
        with pytest.raises(NotImplementedError, match="out= function"):
            torch.add(dual, dual, out=torch.zeros_like(x))  # PyTorch's rule for out=
        with pytest.raises(RuntimeError, match="forward"):
            ironmoe.fused_experts(dual, w1, w2, weights, ids, out=torch.zeros_like(x))


@pytest.mark.parametrize("case", ["w1 H", "w2 I", "topk_weights T", "out shape", "x dtype"])
def test_meta_tensors_refuse_what_the_cpu_op_refuses(gen, case):
    # Meta tensors run the fake kernels (docs/contract.md E4: "make the same shape checks"):
    # shapes the CPU op refuses came back as a [T, H] result.
    x, w1, w2 = random_problem(gen, 4, 32, 16, 4, torch.float32)
    weights = torch.rand(4, 2, generator=gen)
    ids = distinct_ids(gen, 4, 4, 2)
    out = None
    if case == "w1 H":
        w1 = w1[:, :, :16].contiguous()
    elif case == "w2 I":
        w2 = w2[:, :, :8].contiguous()
    elif case == "topk_weights T":
        weights = weights[:3].contiguous()
    elif case == "out shape":
        out = torch.empty(4, 16)
    else:
        x = x.double()
    with pytest.raises(RuntimeError):
        ironmoe.fused_experts(x, w1, w2, weights, ids, out=out)  # the CPU op refuses it
    meta = [t.to("meta") for t in (x, w1, w2, weights, ids)]
    with pytest.raises(RuntimeError):
        ironmoe.fused_experts(*meta, out=None if out is None else out.to("meta"))


def test_torch_compile_fullgraph(gen):
    x, w1, w2 = random_problem(gen, 8, 64, 32, 8, torch.float32)
    logits = torch.randn(8, 8, generator=gen)

    def layer(x, logits):
        return ironmoe.fused_moe(x, logits, w1, w2, top_k=2) * 2.0

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x, logits), layer(x, logits))


def test_torch_compile_fullgraph_with_out(gen):
    x, w1, w2 = random_problem(gen, 8, 64, 32, 8, torch.float32)
    logits = torch.randn(8, 8, generator=gen)

    def layer(x, out):
        ironmoe.fused_moe(x, logits, w1, w2, top_k=2, out=out)
        return out * 2.0

    expected = layer(x, torch.empty_like(x))
    out = torch.empty_like(x)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x, out), expected)
    assert torch.equal(out * 2.0, expected)
