#pragma once
// Where each buffer of Layer::forward lives inside the caller's workspace. A pure function of the
// config and the device, so workspace_bytes() and forward() can never disagree.
#include <cstddef>
#include <cstdint>

#include "ironmoe/config.h"
#include "ironmoe/types.h"

namespace ironmoe::core {

inline constexpr size_t kWorkspaceAlignment = 256;

struct WorkspaceLayout {
  // Byte offsets into the workspace; sizes are for max_tokens.
  size_t topk_ids = 0;        // i32 [max_tokens, k]
  size_t topk_weights = 0;    // f32 [max_tokens, k]
  size_t expert_counts = 0;   // i32 [E_local]
  size_t expert_offsets = 0;  // i32 [E_local + 1]
  size_t slot_to_row = 0;     // i32 [max_tokens, k]
  size_t row_to_slot = 0;     // i32 [R]
  size_t permuted_in = 0;     // dtype [R, H], permuted_out's bytes (the experts run in place)
  size_t intermediate = 0;    // dtype [R, I]; FP8: none (h lives in the expert scratch)
  size_t permuted_out = 0;    // dtype [R, H]
  size_t input_scale = 0;     // f32 [1], fp8_tensor's dynamic GEMM1 input scale
  size_t plan_scratch = 0;
  size_t plan_scratch_bytes = 0;
  size_t expert_scratch = 0;
  size_t expert_scratch_bytes = 0;
  size_t total_bytes = 0;
  int64_t max_rows = 0;  // R for max_tokens
};

WorkspaceLayout workspace_layout(const MoeConfig& config, Device device);

}  // namespace ironmoe::core
