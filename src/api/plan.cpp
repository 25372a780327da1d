// ironmoe::plan and plan_scratch_bytes: validate on the host, then run the stream's backend.
#include "ironmoe/plan.h"

#include "api/validate.h"
#include "cpu/cpu_backend.h"
#include "cuda/cuda_backend.h"

namespace ironmoe {

size_t plan_scratch_bytes(int64_t max_tokens, int64_t top_k, int64_t num_local_experts,
                          Device device) {
  const char* where = "plan_scratch_bytes";
  api::check_top_k(where, "top_k", top_k);
  IRONMOE_CHECK(max_tokens >= 0 && max_tokens <= api::kMaxIndex / top_k, where,
                "max_tokens: expected a value in [0, ", api::kMaxIndex / top_k,
                "] (max_tokens * top_k must fit int32), got ", max_tokens);
  IRONMOE_CHECK(num_local_experts >= 0 && num_local_experts <= api::kMaxIndex, where,
                "num_local_experts: expected a value in [0, ", api::kMaxIndex, "], got ",
                num_local_experts);
  if (device.is_cpu()) return 0;  // the CPU plan counts in its outputs
  return cuda::plan_scratch_bytes(max_tokens, top_k, num_local_experts, device.index);
}

void plan(const PlanArgs& args, const Stream& stream) {
  const char* where = "plan";
  api::check_stream(where, stream);
  const Device device = stream.device;

  IRONMOE_CHECK(api::present(args.topk_ids), where, "topk_ids: expected a [T, k] i32 tensor, ",
                "got none");
  check_tensor(where, "topk_ids", args.topk_ids, {DType::i32, {-1, -1}}, device);
  const int64_t tokens = args.topk_ids.size(0);
  const int64_t top_k = args.topk_ids.size(1);
  api::check_top_k(where, "topk_ids", top_k);
  const int64_t expert_end =
      api::check_expert_range(where, args.num_experts, args.expert_begin, args.expert_end);
  IRONMOE_CHECK(top_k <= args.num_experts, where, "topk_ids: expected k <= num_experts (",
                args.num_experts, ") columns, got ", top_k);
  IRONMOE_CHECK(tokens <= api::kMaxIndex / top_k, where,
                "topk_ids: T * k must fit int32, got T = ", tokens, ", k = ", top_k);
  const int64_t local_experts = expert_end - args.expert_begin;

  int64_t rows = tokens * top_k;
  if (args.layout == Layout::batched) {
    IRONMOE_CHECK(args.capacity >= 1, where, "capacity: expected >= 1 rows per expert for the ",
                  "batched layout, got ", args.capacity);
    IRONMOE_CHECK(local_experts == 0 || args.capacity <= api::kMaxIndex / local_experts, where,
                  "capacity: local experts x capacity must fit int32, got ", local_experts, " x ",
                  args.capacity);
    rows = local_experts * args.capacity;
  } else {
    IRONMOE_CHECK(args.layout == Layout::contiguous, where,
                  "layout: expected contiguous or batched, got ", static_cast<int>(args.layout));
  }

  check_tensor(where, "expert_counts", args.expert_counts, {DType::i32, {local_experts}}, device);
  check_tensor(where, "expert_offsets", args.expert_offsets, {DType::i32, {local_experts + 1}},
               device);
  check_tensor(where, "slot_to_row", args.slot_to_row, {DType::i32, {tokens, top_k}}, device);
  check_tensor(where, "row_to_slot", args.row_to_slot, {DType::i32, {rows}}, device);
  api::check_scratch(where, args.scratch, args.scratch_bytes,
                     plan_scratch_bytes(tokens, top_k, local_experts, device));

  api::check_outputs_apart(where,
                           {api::byte_range("expert_counts", args.expert_counts),
                            api::byte_range("expert_offsets", args.expert_offsets),
                            api::byte_range("slot_to_row", args.slot_to_row),
                            api::byte_range("row_to_slot", args.row_to_slot),
                            api::byte_range("scratch", args.scratch, args.scratch_bytes),
                            api::diagnostics_range(where, args.diagnostics)},
                           {api::byte_range("topk_ids", args.topk_ids),
                            api::num_valid_range(where, args.num_valid_tokens)});

  if (device.is_cpu()) {
    cpu::plan(args, stream.threads);
  } else {
    cuda::plan(args, stream.cuda_stream);
  }
}

}  // namespace ironmoe
