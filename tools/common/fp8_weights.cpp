#include "common/fp8_weights.h"

namespace ironmoe::tools {
namespace {

int64_t blocks(int64_t n) { return (n + 127) / 128; }

}  // namespace

int64_t fp8_scales_per_expert(QuantScheme quant, int64_t rows, int64_t cols) {
  switch (quant) {
    case QuantScheme::fp8_tensor: return 1;
    case QuantScheme::fp8_channel: return rows;
    case QuantScheme::fp8_block: return blocks(rows) * blocks(cols);
    case QuantScheme::none: break;
  }
  return 0;
}

TensorView fp8_weight_scale_view(const DeviceBuffer& scales, QuantScheme quant, int64_t experts,
                                 int64_t rows, int64_t cols) {
  switch (quant) {
    case QuantScheme::fp8_channel: return scales.view(DType::f32, {experts, rows});
    case QuantScheme::fp8_block:
      return scales.view(DType::f32, {experts, blocks(rows), blocks(cols)});
    default: return scales.view(DType::f32, {experts});
  }
}

}  // namespace ironmoe::tools
