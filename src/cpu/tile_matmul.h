#pragma once
// The CPU expert stage's matmul building blocks (experts.cpp, experts_fp8.cpp). Work is split into
// items (local expert, row block, column block); each item widens its rows and weight rows to
// fp32 tiles on the stack, one depth block at a time, and multiplies them with a register-blocked
// micro kernel the compiler vectorises.
//
// Numerics: every output element is a dot product over K kept in kLanes fp32 partial sums (lane
// l adds the products of k = l, l + kLanes, ... in increasing k), combined at the end by one
// fixed tree (reduce_lanes). That order does not depend on the tile an element falls in, the
// number of rows its expert has or the thread that runs it, so results are the same for every
// thread count and every batch a token shares.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/bf16.h"
#include "cpu/parallel.h"
#include "ironmoe/types.h"

namespace ironmoe::cpu::tiles {

constexpr int kLanes = 8;             // partial sums per dot product (one AVX / two SSE vectors)
constexpr int kMicroRows = 2;         // token rows of a micro tile (register block)
constexpr int kMicroCols = 4;         // weight rows of a micro tile
constexpr int64_t kRowBlock = 32;     // token rows of one work item
constexpr int64_t kColBlock = 32;     // weight rows (output columns) of one work item
constexpr int64_t kDepthBlock = 256;  // K per fp32 tile
// GEMM1 computes gate and up rows of the same intermediate columns side by side.
constexpr int64_t kGateUpCols = kColBlock / 2;

static_assert(kGateUpCols % kMicroCols == 0);
static_assert(kDepthBlock % kLanes == 0, "lane l must keep meaning k = l mod kLanes");

// The fp32 working set of one work item, 96 KiB of stack.
struct Tiles {
  alignas(64) float a[kRowBlock][kDepthBlock];          // token rows, one depth block
  alignas(64) float w[kColBlock][kDepthBlock];          // weight rows, one depth block
  alignas(64) float acc[kRowBlock][kColBlock][kLanes];  // lane partial sums over all of K
};

template <class Storage>
inline float load(const Storage* p, int64_t i) {
  if constexpr (sizeof(Storage) == 2) {
    return core::bf16_to_float(p[i]);
  } else {
    return p[i];
  }
}

template <class Storage>
inline void store(Storage* p, int64_t i, float v) {
  if constexpr (sizeof(Storage) == 2) {
    p[i] = core::float_to_bf16(v);
  } else {
    p[i] = v;
  }
}

inline float activate(Activation activation, float gate) {
  if (activation == Activation::gelu_and_mul) {
    return 0.5f * gate * (1.0f + std::erf(gate * 0.70710678118654752f));
  }
  return gate / (1.0f + std::exp(-gate));
}

// The fixed combination of the lanes: ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
inline float reduce_lanes(const float* lanes) {
  float half[kLanes / 2];
  for (int l = 0; l < kLanes / 2; ++l) half[l] = lanes[l] + lanes[l + kLanes / 2];
  return (half[0] + half[2]) + (half[1] + half[3]);
}

// Row sources of the multiply: widen(row, k0, count, padded, dst) writes elements
// [k0, k0 + count) of row `row` to dst as fp32 and zero-pads dst to `padded` (a multiple of
// kLanes). PlainRows reads the storage dtype; experts_fp8.cpp adds E4M3 codes times scales.
template <class Storage>
struct PlainRows {
  const Storage* data;
  int64_t stride;  // elements between rows

  [[gnu::always_inline]] void widen(int64_t row, int64_t k0, int64_t count, int64_t padded,
                                    float* dst) const {
    const Storage* src = data + row * stride + k0;
    for (int64_t k = 0; k < count; ++k) dst[k] = load(src, k);
    std::fill(dst + count, dst + padded, 0.0f);
  }
};

// The micro kernel is written once with GCC/Clang vector extensions, for vectors of 4 or 8
// floats; vector arithmetic is lane by lane, so every instantiation computes exactly the per-lane
// sums defined above, bit for bit. x86-64 builds for the baseline ISA (SSE2) also carry an AVX2
// copy, picked at run time; it does not enable FMA, so products round as in the baseline.
typedef float Float4 __attribute__((vector_size(4 * sizeof(float))));
typedef float Float8 __attribute__((vector_size(8 * sizeof(float))));

// acc[m][n][l] += sum over k = l, l + kLanes, ... < depth of a[m][k] * w[n][k], for Rows tile rows
// and kMicroCols weight rows; depth is a multiple of kLanes. The sums live in registers for the
// whole depth (the unroll pragmas make sure the small arrays below become registers).
template <class Vector, int Rows>
[[gnu::always_inline]] inline void micro_tile_body(const float* a, const float* w, int64_t depth,
                                                   float* acc) {
  constexpr int kWidth = sizeof(Vector) / sizeof(float);
  constexpr int kParts = kLanes / kWidth;
  static_assert(kParts * kWidth == kLanes);
  Vector sums[Rows][kMicroCols][kParts];
#pragma GCC unroll 8
  for (int m = 0; m < Rows; ++m) {
#pragma GCC unroll 8
    for (int n = 0; n < kMicroCols; ++n) {
      const float* lanes = acc + (m * kColBlock + n) * kLanes;
#pragma GCC unroll 8
      for (int p = 0; p < kParts; ++p) {
        std::memcpy(&sums[m][n][p], lanes + p * kWidth, sizeof(Vector));
      }
    }
  }
  for (int64_t k = 0; k < depth; k += kLanes) {
    Vector a_k[Rows][kParts];
    Vector w_k[kMicroCols][kParts];
#pragma GCC unroll 8
    for (int p = 0; p < kParts; ++p) {
      const int64_t offset = k + p * kWidth;
#pragma GCC unroll 8
      for (int m = 0; m < Rows; ++m) {
        std::memcpy(&a_k[m][p], a + m * kDepthBlock + offset, sizeof(Vector));
      }
#pragma GCC unroll 8
      for (int n = 0; n < kMicroCols; ++n) {
        std::memcpy(&w_k[n][p], w + n * kDepthBlock + offset, sizeof(Vector));
      }
    }
#pragma GCC unroll 8
    for (int m = 0; m < Rows; ++m) {
#pragma GCC unroll 8
      for (int n = 0; n < kMicroCols; ++n) {
#pragma GCC unroll 8
        for (int p = 0; p < kParts; ++p) sums[m][n][p] += a_k[m][p] * w_k[n][p];
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < Rows; ++m) {
#pragma GCC unroll 8
    for (int n = 0; n < kMicroCols; ++n) {
      float* lanes = acc + (m * kColBlock + n) * kLanes;
#pragma GCC unroll 8
      for (int p = 0; p < kParts; ++p) {
        std::memcpy(lanes + p * kWidth, &sums[m][n][p], sizeof(Vector));
      }
    }
  }
}

// micro_tile_body for the last rows of a block, which may be fewer than kMicroRows.
template <class Vector, int Rows = kMicroRows>
[[gnu::always_inline]] inline void micro_tile(int64_t rows, const float* a, const float* w,
                                              int64_t depth, float* acc) {
  if constexpr (Rows > 1) {
    if (rows < Rows) return micro_tile<Vector, Rows - 1>(rows, a, w, depth, acc);
  }
  micro_tile_body<Vector, Rows>(a, w, depth, acc);
}

// Weight rows [first, first + count) of `source` (each `depth` long), whose results land in tile
// columns [column, column + count).
template <class Rows>
struct Segment {
  Rows source;
  int64_t first;
  int64_t count;
  int64_t column;
};

// c[m][column] = dot(A[a_row0 + m], W[column]) for the item's rows and the segments' weight
// rows, with c of row stride kColBlock.
template <class Vector, class ARows, class WRows>
[[gnu::always_inline]] inline void multiply_body(const ARows& a, int64_t a_row0, int64_t rows,
                                                 int64_t depth, const Segment<WRows>* segments,
                                                 int num_segments, Tiles& tiles, float* c) {
  for (int64_t m = 0; m < rows; ++m) {
    std::fill(&tiles.acc[m][0][0], &tiles.acc[m][0][0] + kColBlock * kLanes, 0.0f);
  }
  for (int64_t k0 = 0; k0 < depth; k0 += kDepthBlock) {
    const int64_t kb = std::min(kDepthBlock, depth - k0);
    const int64_t padded = (kb + kLanes - 1) / kLanes * kLanes;
    for (int64_t m = 0; m < rows; ++m) a.widen(a_row0 + m, k0, kb, padded, tiles.a[m]);
    for (int s = 0; s < num_segments; ++s) {
      const Segment<WRows>& seg = segments[s];
      const int64_t used = (seg.count + kMicroCols - 1) / kMicroCols * kMicroCols;
      for (int64_t i = 0; i < seg.count; ++i) {
        seg.source.widen(seg.first + i, k0, kb, padded, tiles.w[seg.column + i]);
      }
      for (int64_t i = seg.count; i < used; ++i) {  // edge of a micro tile: zero weight rows
        std::fill(tiles.w[seg.column + i], tiles.w[seg.column + i] + padded, 0.0f);
      }
      for (int64_t n = seg.column; n < seg.column + used; n += kMicroCols) {
        for (int64_t m = 0; m < rows; m += kMicroRows) {
          const float* a_tile = tiles.a[m];
          const float* w_tile = tiles.w[n];
          float* acc = &tiles.acc[m][n][0];
          micro_tile<Vector>(rows - m, a_tile, w_tile, padded, acc);
        }
      }
    }
  }
  for (int s = 0; s < num_segments; ++s) {
    for (int64_t m = 0; m < rows; ++m) {
      for (int64_t n = segments[s].column; n < segments[s].column + segments[s].count; ++n) {
        c[m * kColBlock + n] = reduce_lanes(tiles.acc[m][n]);
      }
    }
  }
}

#if defined(__x86_64__) && !defined(__AVX2__)
template <class ARows, class WRows>
[[gnu::target("avx2")]] void multiply_avx2(const ARows& a, int64_t a_row0, int64_t rows,
                                           int64_t depth, const Segment<WRows>* segments,
                                           int num_segments, Tiles& tiles, float* c) {
  multiply_body<Float8>(a, a_row0, rows, depth, segments, num_segments, tiles, c);
}

template <class ARows, class WRows>
void multiply(const ARows& a, int64_t a_row0, int64_t rows, int64_t depth,
              const Segment<WRows>* segments, int num_segments, Tiles& tiles, float* c) {
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx2) {
    multiply_avx2(a, a_row0, rows, depth, segments, num_segments, tiles, c);
  } else {
    multiply_body<Float4>(a, a_row0, rows, depth, segments, num_segments, tiles, c);
  }
}
#else
template <class ARows, class WRows>
void multiply(const ARows& a, int64_t a_row0, int64_t rows, int64_t depth,
              const Segment<WRows>* segments, int num_segments, Tiles& tiles, float* c) {
  multiply_body<Float8>(a, a_row0, rows, depth, segments, num_segments, tiles, c);
}
#endif

// The work of one stage phase: per local expert, row blocks x column blocks.
struct Problem {
  const int32_t* offsets;
  const int32_t* counts;
  int64_t local_experts;
  int64_t col_blocks;

  int64_t row_blocks(int64_t e) const { return (counts[e] + kRowBlock - 1) / kRowBlock; }
  int64_t items() const {
    int64_t total = 0;
    for (int64_t e = 0; e < local_experts; ++e) total += row_blocks(e) * col_blocks;
    return total;
  }
  // Calls fn(expert, first_row, rows, col_block) for items [begin, end), column block major so
  // that consecutive items reuse the same weights.
  template <class Fn>
  void for_items(int64_t begin, int64_t end, Fn&& fn) const {
    int64_t first = 0;
    for (int64_t e = 0; e < local_experts && first < end; ++e) {
      const int64_t blocks = row_blocks(e);
      const int64_t count = blocks * col_blocks;
      for (int64_t i = std::max(begin, first); i < std::min(end, first + count); ++i) {
        const int64_t local = i - first;
        const int64_t row_block = local % blocks;
        const int64_t row0 = offsets[e] + row_block * kRowBlock;
        const int64_t rows = std::min<int64_t>(kRowBlock, counts[e] - row_block * kRowBlock);
        fn(e, row0, rows, local / blocks);
      }
      first += count;
    }
  }
};

// GEMM1 over every item of `problem`: gate and up dot products of A's rows with the gate and up
// weight rows of weights_of(e) (rows [0, I) and [I, 2I)), handed to epilogue(row, n, gate, up)
// for each intermediate column n.
template <class ARows, class WeightsOf, class Epilogue>
void gate_up_pass(const Problem& problem, int64_t intermediate, int64_t hidden, const ARows& a,
                  WeightsOf weights_of, Epilogue epilogue, ThreadPool* threads) {
  Problem gate_up = problem;
  gate_up.col_blocks = (intermediate + kGateUpCols - 1) / kGateUpCols;
  parallel_for(threads, gate_up.items(), [&](int64_t begin, int64_t end) {
    Tiles tiles;
    float tile[kRowBlock * kColBlock];
    gate_up.for_items(begin, end, [&](int64_t e, int64_t row0, int64_t rows, int64_t block) {
      const int64_t n0 = block * kGateUpCols;
      const int64_t nb = std::min(kGateUpCols, intermediate - n0);
      const auto w = weights_of(e);
      const Segment<decltype(w)> segments[2] = {{w, n0, nb, 0},
                                                {w, intermediate + n0, nb, kGateUpCols}};
      multiply(a, row0, rows, hidden, segments, 2, tiles, tile);
      for (int64_t m = 0; m < rows; ++m) {
        const float* c = tile + m * kColBlock;
        for (int64_t n = 0; n < nb; ++n) epilogue(row0 + m, n0 + n, c[n], c[kGateUpCols + n]);
      }
    });
  });
}

// GEMM2 over every item of `problem`: store(row, n, h[row] . weights_of(e)[n]) for each hidden
// column n.
template <class HRows, class WeightsOf, class Store>
void down_pass(const Problem& problem, int64_t hidden, int64_t intermediate, const HRows& h,
               WeightsOf weights_of, Store store_value, ThreadPool* threads) {
  Problem down = problem;
  down.col_blocks = (hidden + kColBlock - 1) / kColBlock;
  parallel_for(threads, down.items(), [&](int64_t begin, int64_t end) {
    Tiles tiles;
    float tile[kRowBlock * kColBlock];
    down.for_items(begin, end, [&](int64_t e, int64_t row0, int64_t rows, int64_t block) {
      const int64_t n0 = block * kColBlock;
      const int64_t nb = std::min(kColBlock, hidden - n0);
      const auto w = weights_of(e);
      const Segment<decltype(w)> segment = {w, n0, nb, 0};
      multiply(h, row0, rows, intermediate, &segment, 1, tiles, tile);
      for (int64_t m = 0; m < rows; ++m) {
        const float* c = tile + m * kColBlock;
        for (int64_t n = 0; n < nb; ++n) store_value(row0 + m, n0 + n, c[n]);
      }
    });
  });
}

}  // namespace ironmoe::cpu::tiles
