#pragma once
// FP8 helpers of the layer (docs/formats.md "FP8 experts").
//
// fp8_input_scale: fp8_tensor's dynamic GEMM1 input scale, taken over every valid token's row of
// x before dispatch (as vLLM takes it), so it does not depend on which rows reach which rank:
//   scale = max(amax / 448, 1 / (448 * 512)),  amax over x[t] for t < num_valid_tokens, NaN ignored
// (one NaN row must not poison the batch: its own values still quantise to NaN). Layer::forward
// runs it when the scheme is fp8_tensor and no static weights.w13_input_scale is given.
#include <cstdint>

#include "ironmoe/stream.h"
#include "ironmoe/tensor.h"

namespace ironmoe {

struct Fp8InputScaleArgs {
  TensorView x;                               // [T, H], rows may be strided
  const int32_t* num_valid_tokens = nullptr;  // optional, on the stream's device
  TensorView scale;                           // out f32 [1]
};

void fp8_input_scale(const Fp8InputScaleArgs& args, const Stream& stream);

}  // namespace ironmoe
