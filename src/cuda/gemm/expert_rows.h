#pragma once
// The one description of which permuted rows belong to which local expert, shared by every
// expert kernel: expert e owns rows [offsets[e], offsets[e] + counts[e]) of the [R, ...] row
// buffers. Contiguous and batched layouts differ only in the offsets (DESIGN.md section 4).
#include <cstdint>

namespace ironmoe::cuda::gemm {

struct ExpertRows {
  const int32_t* offsets = nullptr;  // device, [num_experts] (entries past that are not read)
  const int32_t* counts = nullptr;   // device, [num_experts]
  int64_t num_experts = 0;           // E_local
  int64_t num_rows = 0;              // R: rows of the permuted buffers
};

}  // namespace ironmoe::cuda::gemm
