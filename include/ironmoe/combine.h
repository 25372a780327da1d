#pragma once
// Stage 5: out[t] = sum over j in 0..k-1 (in that order, fp32) of
//   topk_weights[t, j] * permuted_out[slot_to_row[t*k + j]]
// skipping slots whose row is -1. Rows t >= *num_valid_tokens are written as zeros.
#include "ironmoe/stream.h"
#include "ironmoe/tensor.h"

namespace ironmoe {

struct CombineArgs {
  TensorView permuted_out;  // [R, H]
  TensorView slot_to_row;   // [T, k] i32 from plan()
  TensorView topk_weights;  // [T, k] f32
  TensorView out;           // out [T, H], same dtype as permuted_out, rows may be strided
  const int32_t* num_valid_tokens = nullptr;
};

void combine(const CombineArgs& args, const Stream& stream);

}  // namespace ironmoe
