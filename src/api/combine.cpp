// ironmoe::combine: validates on the host, then runs the backend of the stream's device.
#include "ironmoe/combine.h"

#include "api/validate.h"
#include "cpu/cpu_backend.h"
#include "cuda/cuda_backend.h"

namespace ironmoe {

void combine(const CombineArgs& args, const Stream& stream) {
  const char* where = "combine";
  api::check_stream(where, stream);
  const Device device = stream.device;

  IRONMOE_CHECK(api::present(args.permuted_out), where, "permuted_out: expected an [R, H] ",
                "tensor, got none");
  api::check_float_dtype(where, "permuted_out", args.permuted_out.dtype, device);
  check_tensor(where, "permuted_out", args.permuted_out, {args.permuted_out.dtype, {-1, -1}},
               device);
  const int64_t hidden = args.permuted_out.size(1);
  IRONMOE_CHECK(hidden >= 1, where, "permuted_out: expected H >= 1 columns, got ", hidden);

  IRONMOE_CHECK(api::present(args.slot_to_row), where, "slot_to_row: expected a [T, k] i32 ",
                "tensor, got none");
  check_tensor(where, "slot_to_row", args.slot_to_row, {DType::i32, {-1, -1}}, device);
  const int64_t tokens = args.slot_to_row.size(0);
  const int64_t top_k = args.slot_to_row.size(1);
  api::check_top_k(where, "slot_to_row", top_k);
  check_tensor(where, "topk_weights", args.topk_weights, {DType::f32, {tokens, top_k}}, device);
  check_tensor(where, "out", args.out, {args.permuted_out.dtype, {tokens, hidden}, true}, device);

  api::check_outputs_apart(where, {api::byte_range("out", args.out)},
                           {api::byte_range("permuted_out", args.permuted_out),
                            api::byte_range("slot_to_row", args.slot_to_row),
                            api::byte_range("topk_weights", args.topk_weights),
                            api::num_valid_range(where, args.num_valid_tokens)});

  if (device.is_cpu()) {
    cpu::combine(args, stream.threads);
  } else {
    cuda::combine(args, stream.cuda_stream);
  }
}

}  // namespace ironmoe
