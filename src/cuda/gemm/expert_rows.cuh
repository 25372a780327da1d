#pragma once
// Device side of ExpertRows. Nothing upstream is trusted (DESIGN.md section 3): a range with a
// negative start or count, or one that reaches past row R, is treated as empty, so no expert
// kernel ever reads or writes outside [0, R) whatever the offsets and counts hold.
#include "cuda/gemm/expert_rows.h"

namespace ironmoe::cuda::gemm {

struct RowRange {
  int64_t begin = 0;
  int64_t count = 0;
};

__device__ __forceinline__ RowRange expert_row_range(const ExpertRows& rows, int64_t expert) {
  const int64_t begin = rows.offsets[expert];
  const int64_t count = rows.counts[expert];
  if (begin < 0 || count <= 0 || begin > rows.num_rows - count) return {};
  return {begin, count};
}

}  // namespace ironmoe::cuda::gemm
