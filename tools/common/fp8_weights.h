#pragma once
// FP8 weight scales as the layer takes them (include/ironmoe/experts.h): how many f32 scales one
// expert's [rows, cols] weight has under a scheme, and the view of a scale buffer in that shape.
#include <cstdint>

#include "common/device_memory.h"
#include "ironmoe/tensor.h"
#include "ironmoe/types.h"

namespace ironmoe::tools {

// 1 (fp8_tensor), rows (fp8_channel), ceil(rows / 128) * ceil(cols / 128) (fp8_block), 0 (none).
int64_t fp8_scales_per_expert(QuantScheme quant, int64_t rows, int64_t cols);

// [experts], [experts, rows] or [experts, ceil(rows / 128), ceil(cols / 128)] f32 over `scales`.
TensorView fp8_weight_scale_view(const DeviceBuffer& scales, QuantScheme quant, int64_t experts,
                                 int64_t rows, int64_t cols);

}  // namespace ironmoe::tools
