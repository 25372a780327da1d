#pragma once
// The FP8 schemes' scales (docs/formats.md "FP8 experts"): the shapes of the weight scale tensors,
// and where the scale of element (row, k) of a weight matrix or of an activation row lives. The
// CPU backend and the CUDA kernels index scales only through these, so they agree; an activation
// scale is indexed by the permuted row, never by a token count.
#include <cstdint>

#include "core/host_device.h"
#include "ironmoe/types.h"

namespace ironmoe::core {

inline constexpr int64_t kFp8Block =
    128;  // fp8_block: 128 x 128 weight blocks, 1 x 128 activations

IRONMOE_HD int64_t fp8_blocks(int64_t n) { return (n + kFp8Block - 1) / kFp8Block; }

// Scale of element (row, k): data[(row / row_group) * row_stride + k / k_group], a group of 0
// meaning one scale along that dimension.
struct Fp8ScaleMap {
  const float* data = nullptr;
  int64_t row_group = 0;
  int64_t row_stride = 0;
  int64_t k_group = 0;

  // The scales of `row`: element k / k_group (0 without K blocks) is the scale of column k.
  IRONMOE_HD const float* row_base(int64_t row) const {
    return data + (row_group != 0 ? row / row_group * row_stride : 0);
  }
  IRONMOE_HD float at(int64_t row, int64_t k) const {
    return row_base(row)[k_group != 0 ? k / k_group : 0];
  }
};

// Scale floats per expert of a [rows, cols] weight matrix (output rows x K): 1, rows, or
// ceil(rows / 128) * ceil(cols / 128).
IRONMOE_HD int64_t fp8_weight_scales_per_expert(QuantScheme quant, int64_t rows, int64_t cols) {
  switch (quant) {
    case QuantScheme::fp8_tensor: return 1;
    case QuantScheme::fp8_channel: return rows;
    case QuantScheme::fp8_block: return fp8_blocks(rows) * fp8_blocks(cols);
    case QuantScheme::none: break;
  }
  return 0;
}

// The scales of local expert `expert`'s [rows, cols] matrix in a [E_local, ...] scale tensor.
IRONMOE_HD Fp8ScaleMap fp8_weight_scale_map(QuantScheme quant, const float* scales, int64_t expert,
                                            int64_t rows, int64_t cols) {
  const float* base = scales + expert * fp8_weight_scales_per_expert(quant, rows, cols);
  switch (quant) {
    case QuantScheme::fp8_channel: return {base, 1, 1, 0};
    case QuantScheme::fp8_block: return {base, kFp8Block, fp8_blocks(cols), kFp8Block};
    default: return {base, 0, 0, 0};
  }
}

// Dynamic activation scales per row of K columns: none (fp8_tensor: one for the tensor), 1
// (fp8_channel), ceil(K / 128) (fp8_block).
IRONMOE_HD int64_t fp8_activation_scales_per_row(QuantScheme quant, int64_t k) {
  switch (quant) {
    case QuantScheme::fp8_channel: return 1;
    case QuantScheme::fp8_block: return fp8_blocks(k);
    default: return 0;
  }
}

// Activation scales of an [R, K] activation: `row_scales` [R, fp8_activation_scales_per_row]
// or, for fp8_tensor, the single `tensor_scale`.
IRONMOE_HD Fp8ScaleMap fp8_activation_scale_map(QuantScheme quant, const float* row_scales,
                                                const float* tensor_scale, int64_t k) {
  switch (quant) {
    case QuantScheme::fp8_channel: return {row_scales, 1, 1, 0};
    case QuantScheme::fp8_block: return {row_scales, 1, fp8_blocks(k), kFp8Block};
    default: return {tensor_scale, 0, 0, 0};
  }
}

}  // namespace ironmoe::core
