// The fp8_input_scale stage on the CPU (quantize.h has the quantisation rules it shares).
#include "cpu/quantize.h"

#include <bit>

#include "core/bf16.h"
#include "core/plan_math.h"
#include "cpu/cpu_backend.h"
#include "cpu/parallel.h"

namespace ironmoe::cpu {

void fp8_input_scale(const Fp8InputScaleArgs& args, ThreadPool* threads) {
  const int64_t hidden = args.x.size(1);
  const int64_t valid = core::valid_tokens(args.x.size(0), args.num_valid_tokens);
  const int64_t stride = args.x.strides[0];
  uint32_t largest = 0;
  parallel_for(threads, valid, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (args.x.dtype == DType::bf16) {
        const uint16_t* row = args.x.ptr<const uint16_t>() + t * stride;
        raise_amax(&largest,
                   amax([&](int64_t c) { return core::bf16_to_float(row[c]); }, 0, hidden, false));
      } else {
        const float* row = args.x.ptr<const float>() + t * stride;
        raise_amax(&largest, amax([&](int64_t c) { return row[c]; }, 0, hidden, false));
      }
    }
  });
  *args.scale.ptr<float>() = core::fp8_dynamic_scale(std::bit_cast<float>(largest));
}

}  // namespace ironmoe::cpu
