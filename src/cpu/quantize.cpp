// CPU FP8 quantisation (quantize.h) and the fp8_input_scale stage on the CPU.
#include "cpu/quantize.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/bf16.h"
#include "core/fp8.h"
#include "core/fp8_scales.h"
#include "core/plan_math.h"
#include "cpu/cpu_backend.h"
#include "cpu/parallel.h"

namespace ironmoe::cpu {

float amax(const float* values, int64_t n, bool with_nan) {
  float largest = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(values[i])) {
      if (with_nan) return std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    largest = std::max(largest, std::fabs(values[i]));
  }
  return largest;
}

void quantize_row(QuantScheme quant, const float* values, int64_t k, float tensor_scale,
                  uint8_t* codes, float* row_scales) {
  const int64_t group = quant == QuantScheme::fp8_block ? core::kFp8Block : k;
  for (int64_t first = 0, g = 0; first < k; first += group, ++g) {
    const int64_t count = std::min(group, k - first);
    float scale = tensor_scale;
    if (quant != QuantScheme::fp8_tensor) {
      scale = core::fp8_dynamic_scale(amax(values + first, count, true));
      row_scales[g] = scale;
    }
    for (int64_t i = first; i < first + count; ++i) codes[i] = core::fp8_quantize(values[i], scale);
  }
}

void fp8_input_scale(const Fp8InputScaleArgs& args, ThreadPool* threads) {
  const int64_t tokens = args.x.size(0);
  const int64_t hidden = args.x.size(1);
  const int64_t valid = core::valid_tokens(tokens, args.num_valid_tokens);
  std::vector<float> row_amax(static_cast<size_t>(valid), 0.0f);
  parallel_for(threads, valid, [&](int64_t begin, int64_t end) {
    std::vector<float> row(static_cast<size_t>(hidden));
    for (int64_t t = begin; t < end; ++t) {
      const char* src = static_cast<const char*>(args.x.data) +
                        t * args.x.strides[0] * static_cast<int64_t>(dtype_size(args.x.dtype));
      for (int64_t c = 0; c < hidden; ++c) {
        row[c] = args.x.dtype == DType::bf16
                     ? core::bf16_to_float(reinterpret_cast<const uint16_t*>(src)[c])
                     : reinterpret_cast<const float*>(src)[c];
      }
      row_amax[t] = amax(row.data(), hidden, false);
    }
  });
  const float largest = amax(row_amax.data(), valid, false);
  *args.scale.ptr<float>() = core::fp8_dynamic_scale(largest);
}

}  // namespace ironmoe::cpu
