"""FP8 experts through torch.ops.ironmoe.fused_experts (quant="fp8_tensor" | "fp8_channel" |
"fp8_block") against a PyTorch reference written from docs/formats.md's rules: weights quantised
per expert tensor, output channel or 128x128 block; activations per tensor (static or dynamic over
the batch), per row, or per row and 128 columns; h quantised from the GEMM1 result; sums in
float64. Weights and scales come in vLLM's shapes (per-channel scales as [E, N, 1]). Tolerance:
2e-2 of each row's largest value (the library sums in fp32, so an h code may round the other way);
each case must also be much closer to this reference than to the unquantised layer.
"""

import math

import pytest
import torch

import ironmoe
from moe_reference import distinct_ids, random_problem, reference_experts, row_relative_error

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0
MIN_SCALE = 1.0 / (448.0 * 512.0)


def to_e4m3(values):
    """Values on the E4M3 grid (round to nearest even, saturating at +-448), as float64."""
    return values.float().clamp(-E4M3_MAX, E4M3_MAX).to(FP8).double()


def group_scale(amax):
    return torch.clamp(amax.float() / E4M3_MAX, min=MIN_SCALE)


def quantize_weight(w, scheme):
    """One [E, N, K] float weight -> (codes as float8, scales in vLLM's shape)."""
    experts, rows, cols = w.shape
    if scheme == "fp8_tensor":
        scale = group_scale(w.abs().amax(dim=(1, 2)))
        codes = (w / scale[:, None, None]).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)
        return codes, scale
    if scheme == "fp8_channel":
        scale = group_scale(w.abs().amax(dim=2))
        codes = (w / scale[:, :, None]).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)
        return codes, scale[:, :, None]  # vLLM keeps [E, N, 1]
    rb, cb = math.ceil(rows / 128), math.ceil(cols / 128)
    scale = torch.empty(experts, rb, cb)
    codes = torch.empty(experts, rows, cols, dtype=FP8)
    for i in range(rb):
        for j in range(cb):
            block = w[:, i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            s = group_scale(block.abs().amax(dim=(1, 2)))
            scale[:, i, j] = s
            codes[:, i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = \
                (block / s[:, None, None]).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)
    return codes, scale


def dequantize_weight(codes, scale, scheme):
    values = codes.double()
    if scheme == "fp8_tensor":
        return values * scale.double()[:, None, None]
    if scheme == "fp8_channel":
        return values * scale.double().reshape(values.shape[0], values.shape[1], 1)
    expanded = scale.double().repeat_interleave(128, dim=1).repeat_interleave(128, dim=2)
    return values * expanded[:, :values.shape[1], :values.shape[2]]


def quantize_rows(rows, scheme, tensor_scale=None):
    """Activation rows [n, K] (float64) quantised and dequantised per the scheme."""
    if scheme == "fp8_tensor":
        return to_e4m3(rows / tensor_scale) * tensor_scale
    group = 128 if scheme == "fp8_block" else rows.shape[1]
    out = torch.empty_like(rows)
    for first in range(0, rows.shape[1], group):
        part = rows[:, first:first + group]
        scale = group_scale(part.abs().amax(dim=1)).double()[:, None]
        out[:, first:first + group] = to_e4m3(part / scale) * scale
    return out


def reference_fp8(x, w1, w2, weights, ids, scheme, static=None):
    inter = w2.shape[2]
    x64 = x.double()
    if scheme == "fp8_tensor":
        x_scale = static[0] if static else float(group_scale(x64.abs().amax()))
        xq = quantize_rows(x64, scheme, x_scale)
    else:
        xq = quantize_rows(x64, scheme)
    hs = {}
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            if 0 <= e < w1.shape[0]:
                gate = xq[t] @ w1[e, :inter].T
                up = xq[t] @ w1[e, inter:].T
                hs[(t, j)] = torch.nn.functional.silu(gate) * up
    if scheme == "fp8_tensor":
        h_scale = static[1] if static else \
            float(group_scale(torch.stack(list(hs.values())).abs().amax()))
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64)
    for (t, j), h in hs.items():
        hq = quantize_rows(h[None], scheme, h_scale if scheme == "fp8_tensor" else None)[0]
        out[t] += float(weights[t, j]) * (hq @ w2[int(ids[t, j])].T)
    return out


@pytest.mark.parametrize("scheme, static", [("fp8_tensor", False), ("fp8_tensor", True),
                                            ("fp8_channel", False), ("fp8_block", False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_experts_match_the_reference(gen, scheme, static, dtype):
    tokens, hidden, inter, experts, top_k = 11, 320, 208, 6, 3  # blocks cut by H and 2I
    x, w1, w2 = random_problem(gen, tokens, hidden, inter, experts, torch.float32)
    x = x.to(dtype)
    ids = distinct_ids(gen, tokens, experts, top_k)
    ids[0, 0] = -1
    ids[1, 1] = experts + 3  # out of range: adds nothing
    weights = torch.rand(tokens, top_k, generator=gen)
    w1_codes, w1_scale = quantize_weight(w1, scheme)
    w2_codes, w2_scale = quantize_weight(w2, scheme)
    scales = (4.0 / 448.0, 0.5 / 448.0) if static else None
    a1 = torch.tensor([scales[0]]) if static else None
    a2 = torch.tensor([scales[1]]) if static else None
    out = ironmoe.fused_experts(x, w1_codes, w2_codes, weights, ids, quant=scheme,
                                w1_scale=w1_scale, w2_scale=w2_scale, a1_scale=a1, a2_scale=a2)
    w1_deq = dequantize_weight(w1_codes, w1_scale, scheme)
    w2_deq = dequantize_weight(w2_codes, w2_scale, scheme)
    ref = reference_fp8(x, w1_deq, w2_deq, weights, ids, scheme, scales)
    plain = reference_experts(x.float(), w1_deq.float(), w2_deq.float(), weights, ids)
    assert out.dtype == dtype and out.shape == (tokens, hidden)
    error = row_relative_error(out, ref)
    assert error <= 2e-2
    assert error < 0.5 * row_relative_error(out, plain), "not quantised?"


def test_fp8_argument_errors_name_the_argument(gen):
    x, w1, w2 = random_problem(gen, 4, 128, 64, 2, torch.float32)
    ids = distinct_ids(gen, 4, 2, 1)
    weights = torch.rand(4, 1, generator=gen)
    w1_codes, w1_scale = quantize_weight(w1, "fp8_block")
    w2_codes, w2_scale = quantize_weight(w2, "fp8_block")
    with pytest.raises(RuntimeError, match=r"w13_scale"):
        ironmoe.fused_experts(x, w1_codes, w2_codes, weights, ids, quant="fp8_block",
                              w1_scale=w1_scale[:1], w2_scale=w2_scale)
    with pytest.raises(RuntimeError, match=r"quant: expected"):
        ironmoe.fused_experts(x, w1_codes, w2_codes, weights, ids, quant="int4",
                              w1_scale=w1_scale, w2_scale=w2_scale)
    with pytest.raises(RuntimeError, match=r"f8e4m3"):
        ironmoe.fused_experts(x, w1, w2, weights, ids, quant="fp8_block", w1_scale=w1_scale,
                              w2_scale=w2_scale)
