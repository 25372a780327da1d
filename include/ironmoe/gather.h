#pragma once
// Stage 3: copy each used permuted row from its token: permuted[r] = x[row_to_slot[r] / k].
// Rows with row_to_slot[r] == -1 are not written (no expert reads them).
#include "ironmoe/stream.h"
#include "ironmoe/tensor.h"

namespace ironmoe {

struct GatherArgs {
  TensorView x;            // [T, H], rows may be strided
  TensorView row_to_slot;  // [R] i32 from plan()
  int64_t top_k = 0;
  TensorView permuted;     // out [R, H], same dtype as x, contiguous
};

void gather(const GatherArgs& args, const Stream& stream);

}  // namespace ironmoe
