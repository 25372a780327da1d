#pragma once
// The two tile shapes of the Hopper grouped GEMMs (bf16: grouped_gemm_sm90.h, FP8:
// grouped_gemm_sm90_fp8.h).
//   wide      tiles of 128 rows of an expert x the widest column block (bf16 256, FP8 128): the
//             rows are the tile's M side;
//   few_rows  the operands swapped (d^T = W_e a^T): 128 weight rows x 32 rows of an expert, for
//             experts with a handful of rows each, whose 128-row tiles would be mostly empty. d is
//             the same row-major [R, N] buffer, written as the column-major N x rows result.
#include <cstdint>

namespace ironmoe::cuda::gemm {

enum class Sm90Shape : uint8_t { wide, few_rows };

}  // namespace ironmoe::cuda::gemm
