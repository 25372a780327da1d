#pragma once
// The tile shapes of the Hopper grouped GEMMs (bf16: grouped_gemm_sm90.h, FP8:
// grouped_gemm_sm90_fp8.h).
//   wide      tiles of 128 rows of an expert x the widest column block (bf16 256, FP8 128): the
//             rows are the tile's M side;
//   few_rows  the operands swapped (d^T = W_e a^T): 128 weight rows x 32 rows of an expert, for
//             experts with a handful of rows each, whose 128-row tiles would be mostly empty. d is
//             the same row-major [R, N] buffer, written as the column-major N x rows result.
//   wide_pingpong  FP8 only (forced on the bf16 GEMM, it runs wide): 64 rows of an expert x
//             128 columns, one consumer warp group per tile (ping-pong: one group's epilogue runs
//             under the other's main loop). Half the empty rows of wide at 32-64 rows per expert,
//             and the blockwise kernel's per-K-block promotion of one group overlaps the other
//             group's tensor-core work. Same problem lists as wide. sm90_fp8_shape_for's choice
//             from 17 to 64 rows per expert.
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace ironmoe::cuda::gemm {

enum class Sm90Shape : uint8_t { wide, few_rows, wide_pingpong };

// The shape called `name` ("wide", "few_rows" or "wide_pingpong"), else `otherwise` (null
// included): how the A/B switches IRONMOE_SM90_BF16_SHAPE and IRONMOE_SM90_FP8_SHAPE are read.
inline Sm90Shape sm90_shape_named(const char* name, Sm90Shape otherwise) {
  if (name == nullptr) return otherwise;
  if (std::strcmp(name, "wide") == 0) return Sm90Shape::wide;
  if (std::strcmp(name, "few_rows") == 0) return Sm90Shape::few_rows;
  if (std::strcmp(name, "wide_pingpong") == 0) return Sm90Shape::wide_pingpong;
  return otherwise;
}

// few_rows up to `few_rows_max_average` permuted rows per local expert on average, else wide: the
// form of both GEMMs' measured rules (sm90_bf16_shape_for; sm90_fp8_shape_for then takes
// wide_pingpong for part of the wide range).
inline Sm90Shape sm90_shape_for(int64_t rows_total, int64_t local_experts,
                                int64_t few_rows_max_average) {
  return rows_total <= few_rows_max_average * local_experts ? Sm90Shape::few_rows : Sm90Shape::wide;
}

// IRONMOE_SM90_FEW_ROWS_RASTER=along_n (an experiment, not yet measured): few_rows' tiles step
// along the expert's row tiles first, so an expert with more than one row tile has them computed
// side by side and each weight tile read from memory once; the grouped tile scheduler's default,
// along M, walks all of the expert's weight tiles before its next row tile. wide keeps along M,
// which already puts an expert's row tiles next to each other. The order of the tiles changes no
// result.
inline bool sm90_few_rows_along_n() {
  static const bool along_n = [] {
    const char* raster = std::getenv("IRONMOE_SM90_FEW_ROWS_RASTER");
    return raster != nullptr && std::strcmp(raster, "along_n") == 0;
  }();
  return along_n;
}

}  // namespace ironmoe::cuda::gemm
