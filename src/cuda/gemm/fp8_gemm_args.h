#pragma once
// The operands of one FP8 expert GEMM, for both kernel families (weight_stream_fp8.h,
// grouped_gemm_simt.h): for each local expert e and its rows r,
//   gated: out[r][n] = act(a[r] . w_e[n]) * (a[r] . w_e[N + n])   (fp32 out: h, quantised next)
//   plain: out[r][n] = a[r] . w_e[n]                               (out_dtype)
// with a element (r, k) = code * a_scales.at(r, k) and w_e element (n, k) = code * the scheme's
// scale of expert e (core::fp8_weight_scale_map over w_scales).
#include <cstdint>

#include "core/fp8_scales.h"
#include "ironmoe/types.h"

namespace ironmoe::cuda::gemm {

struct Fp8GemmArgs {
  const uint8_t* a = nullptr;  // [R, K] codes, contiguous
  core::Fp8ScaleMap a_scales;  // indexed by permuted row
  const uint8_t* w = nullptr;  // [E_local, N or 2N, K] codes, contiguous
  const float* w_scales = nullptr;
  QuantScheme quant = QuantScheme::fp8_tensor;
  void* out = nullptr;  // [R, N], row stride out_stride
  int64_t out_stride = 0;
  DType out_dtype = DType::f32;  // gated: f32
  int64_t n = 0;
  int64_t k = 0;
  bool gated = false;
  Activation activation = Activation::silu_and_mul;
};

}  // namespace ironmoe::cuda::gemm
