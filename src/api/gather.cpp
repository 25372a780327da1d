// ironmoe::gather: validates on the host, then runs the backend of the stream's device.
#include "ironmoe/gather.h"

#include "api/validate.h"
#include "cpu/cpu_backend.h"
#include "cuda/cuda_backend.h"

namespace ironmoe {

void gather(const GatherArgs& args, const Stream& stream) {
  const char* where = "gather";
  api::check_stream(where, stream);
  const Device device = stream.device;

  IRONMOE_CHECK(api::present(args.x), where, "x: expected a [T, H] tensor, got none");
  api::check_float_dtype(where, "x", args.x.dtype, device);
  check_tensor(where, "x", args.x, {args.x.dtype, {-1, -1}, true}, device);
  const int64_t tokens = args.x.size(0);
  const int64_t hidden = args.x.size(1);
  IRONMOE_CHECK(hidden >= 1, where, "x: expected H >= 1 columns, got ", hidden);
  api::check_top_k(where, "top_k", args.top_k);
  IRONMOE_CHECK(tokens <= api::kMaxIndex / args.top_k, where,
                "x: T * top_k must fit int32, got T = ", tokens, ", top_k = ", args.top_k);

  IRONMOE_CHECK(api::present(args.row_to_slot), where, "row_to_slot: expected an [R] i32 ",
                "tensor, got none");
  check_tensor(where, "row_to_slot", args.row_to_slot, {DType::i32, {-1}}, device);
  const int64_t rows = args.row_to_slot.size(0);
  check_tensor(where, "permuted", args.permuted, {args.x.dtype, {rows, hidden}}, device);

  api::check_outputs_apart(
      where, {api::byte_range("permuted", args.permuted)},
      {api::byte_range("x", args.x), api::byte_range("row_to_slot", args.row_to_slot)});

  if (device.is_cpu()) {
    cpu::gather(args, stream.threads);
  } else {
    cuda::gather(args, stream.cuda_stream);
  }
}

}  // namespace ironmoe
