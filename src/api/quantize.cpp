// ironmoe::fp8_input_scale: validate on the host, then run the stream's backend.
#include "ironmoe/quantize.h"

#include "api/validate.h"
#include "cpu/cpu_backend.h"
#include "cuda/cuda_backend.h"

namespace ironmoe {

void fp8_input_scale(const Fp8InputScaleArgs& args, const Stream& stream) {
  const char* where = "fp8_input_scale";
  api::check_stream(where, stream);
  const Device device = stream.device;
  IRONMOE_CHECK(api::present(args.x), where, "x: expected a [T, H] tensor, got none");
  api::check_float_dtype(where, "x", args.x.dtype, device);
  check_tensor(where, "x", args.x, {args.x.dtype, {-1, -1}, true}, device);
  // Tokens are int32 everywhere (num_valid_tokens among them); an x without columns has no
  // amax, and [2^62, 0] would otherwise pass every byte check and spin through empty rows.
  IRONMOE_CHECK(args.x.size(0) <= api::kMaxIndex, where, "x: expected at most ", api::kMaxIndex,
                " tokens, got ", args.x.size(0));
  IRONMOE_CHECK(args.x.size(1) >= 1 && args.x.size(1) <= api::kMaxDimension, where,
                "x: expected H in [1, ", api::kMaxDimension, "], got ", args.x.size(1));
  check_tensor(where, "scale", args.scale, {DType::f32, {1}}, device);
  api::check_outputs_apart(
      where, {api::byte_range("scale", args.scale)},
      {api::byte_range("x", args.x), api::num_valid_range(where, args.num_valid_tokens)});
  if (device.is_cpu()) {
    cpu::fp8_input_scale(args, stream.threads);
  } else {
    cuda::fp8_input_scale(args, stream.cuda_stream);
  }
}

}  // namespace ironmoe
