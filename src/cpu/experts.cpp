// CPU expert MLPs. Work is split into items (local expert, row block, column block); each item
// widens its slice of rows and weights to fp32 tiles on the stack and multiplies them with a
// register-blocked micro kernel the compiler vectorises across output columns.
//
// Determinism: every output element is one fp32 sum over K in increasing k order, whatever the
// tile it falls in, the number of rows its expert has or the thread that runs it, so results do
// not depend on the thread count or on the other tokens of the batch.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/bf16.h"
#include "core/check.h"
#include "cpu/cpu_backend.h"
#include "cpu/parallel.h"

namespace ironmoe::cpu {
namespace {

constexpr int kMicroRows = 2;       // token rows of a micro tile (register block)
constexpr int kMicroCols = 4;       // weight rows of a micro tile
constexpr int kLanes = 8;           // partial sums per dot product (the vector width)
constexpr int64_t kRowBlock = 32;   // rows of one work item
constexpr int64_t kColBlock = 64;   // weight rows (output columns) of one work item
// GEMM1 computes gate and up rows of the same intermediate columns side by side.
constexpr int64_t kGateUpCols = kColBlock / 2;

static_assert(kGateUpCols % kMicroCols == 0);

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

float activate(Activation activation, float gate) {
  if (activation == Activation::gelu_and_mul) {
    return 0.5f * gate * (1.0f + std::erf(gate * 0.70710678118654752f));
  }
  return gate / (1.0f + std::exp(-gate));
}

// The fixed reduction of kLanes partial sums: ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
inline float reduce_lanes(const float* lanes) {
  float half[kLanes / 2];
  for (int l = 0; l < kLanes / 2; ++l) half[l] = lanes[l] + lanes[l + kLanes / 2];
  return (half[0] + half[2]) + (half[1] + half[3]);
}

// out[m][n] = dot(a[m], w[n]) over `depth`, for Rows token rows and kMicroCols weight rows.
// Lane l sums the products of k = l, l + kLanes, l + 2 kLanes, ... in increasing order (a tail
// shorter than kLanes is zero-padded), then reduce_lanes combines the lanes.
template <class Storage, int Rows>
void dot_tile(const Storage* const* a, const Storage* const* w, int64_t depth,
              float (&out)[kMicroRows][kMicroCols]) {
  float acc[Rows][kMicroCols][kLanes] = {};
  auto step = [&](int64_t k, int width) {
    float a_lanes[Rows][kLanes] = {};
    float w_lanes[kMicroCols][kLanes] = {};
    for (int m = 0; m < Rows; ++m) {
      for (int l = 0; l < width; ++l) a_lanes[m][l] = load(a[m], k + l);
    }
    for (int n = 0; n < kMicroCols; ++n) {
      for (int l = 0; l < width; ++l) w_lanes[n][l] = load(w[n], k + l);
    }
    for (int m = 0; m < Rows; ++m) {
      for (int n = 0; n < kMicroCols; ++n) {
        for (int l = 0; l < kLanes; ++l) acc[m][n][l] += a_lanes[m][l] * w_lanes[n][l];
      }
    }
  };
  const int64_t full = depth / kLanes * kLanes;
  for (int64_t k = 0; k < full; k += kLanes) step(k, kLanes);
  if (full < depth) step(full, static_cast<int>(depth - full));
  for (int m = 0; m < Rows; ++m) {
    for (int n = 0; n < kMicroCols; ++n) out[m][n] = reduce_lanes(acc[m][n]);
  }
}

// `count` consecutive weight rows (each `depth` long) whose results land in tile columns
// [column, column + count).
template <class Storage>
struct Segment {
  const Storage* rows;
  int64_t count;
  int64_t column;
};

// c[rows x kColBlock] = A[rows x depth] * W^T for the segments' weight rows. Micro tiles at the
// edges repeat the last row (their extra results are dropped), so every element is computed by
// the same instructions wherever it falls.
template <class Storage>
void multiply(const Storage* a, int64_t rows, int64_t depth, const Segment<Storage>* segments,
              int num_segments, float* c) {
  for (int s = 0; s < num_segments; ++s) {
    const Segment<Storage>& seg = segments[s];
    for (int64_t n0 = 0; n0 < seg.count; n0 += kMicroCols) {
      const Storage* w[kMicroCols];
      for (int n = 0; n < kMicroCols; ++n) {
        w[n] = seg.rows + std::min<int64_t>(n0 + n, seg.count - 1) * depth;
      }
      for (int64_t m0 = 0; m0 < rows; m0 += kMicroRows) {
        const Storage* a_rows[kMicroRows];
        for (int m = 0; m < kMicroRows; ++m) {
          a_rows[m] = a + std::min<int64_t>(m0 + m, rows - 1) * depth;
        }
        float out[kMicroRows][kMicroCols];
        if (rows - m0 == 1) {
          dot_tile<Storage, 1>(a_rows, w, depth, out);
        } else {
          dot_tile<Storage, kMicroRows>(a_rows, w, depth, out);
        }
        for (int64_t m = 0; m < std::min<int64_t>(kMicroRows, rows - m0); ++m) {
          for (int64_t n = 0; n < std::min<int64_t>(kMicroCols, seg.count - n0); ++n) {
            c[(m0 + m) * kColBlock + seg.column + n0 + n] = out[m][n];
          }
        }
      }
    }
  }
}

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

template <class Storage>
void run_experts(const ExpertArgs& args, const Problem& problem, ThreadPool* threads) {
  const int64_t hidden = args.permuted_in.size(1);
  const int64_t inter = args.w13.size(1) / 2;
  const auto* x = static_cast<const Storage*>(args.permuted_in.data);
  const auto* w13 = static_cast<const Storage*>(args.w13.data);
  const auto* w2 = static_cast<const Storage*>(args.w2.data);
  auto* h = static_cast<Storage*>(args.intermediate.data);
  auto* y = static_cast<Storage*>(args.permuted_out.data);

  // GEMM1 + activation: h = act(x w_gate^T) * (x w_up^T), rounded to the storage dtype.
  Problem gate_up = problem;
  gate_up.col_blocks = (inter + kGateUpCols - 1) / kGateUpCols;
  parallel_for(threads, gate_up.items(), [&](int64_t begin, int64_t end) {
    float tile[kRowBlock * kColBlock];
    gate_up.for_items(begin, end, [&](int64_t e, int64_t row0, int64_t rows, int64_t block) {
      const int64_t n0 = block * kGateUpCols;
      const int64_t nb = std::min(kGateUpCols, inter - n0);
      const Storage* w = w13 + e * 2 * inter * hidden;
      const Segment<Storage> segments[2] = {{w + n0 * hidden, nb, 0},
                                            {w + (inter + n0) * hidden, nb, kGateUpCols}};
      multiply(x + row0 * hidden, rows, hidden, segments, 2, tile);
      for (int64_t m = 0; m < rows; ++m) {
        const float* c = tile + m * kColBlock;
        Storage* h_row = h + (row0 + m) * inter + n0;
        for (int64_t n = 0; n < nb; ++n) {
          store(h_row, n, activate(args.activation, c[n]) * c[kGateUpCols + n]);
        }
      }
    });
  });

  // GEMM2: y = h w2^T, rounded to the storage dtype.
  Problem down = problem;
  down.col_blocks = (hidden + kColBlock - 1) / kColBlock;
  parallel_for(threads, down.items(), [&](int64_t begin, int64_t end) {
    float tile[kRowBlock * kColBlock];
    down.for_items(begin, end, [&](int64_t e, int64_t row0, int64_t rows, int64_t block) {
      const int64_t n0 = block * kColBlock;
      const int64_t nb = std::min(kColBlock, hidden - n0);
      const Segment<Storage> segment = {w2 + e * hidden * inter + n0 * inter, nb, 0};
      multiply(h + row0 * inter, rows, inter, &segment, 1, tile);
      for (int64_t m = 0; m < rows; ++m) {
        const float* c = tile + m * kColBlock;
        Storage* y_row = y + (row0 + m) * hidden + n0;
        for (int64_t n = 0; n < nb; ++n) store(y_row, n, c[n]);
      }
    });
  });
}

}  // namespace

void experts(const ExpertArgs& args, ThreadPool* threads) {
  const int64_t rows = args.permuted_in.size(0);
  const int64_t local_experts = args.w13.size(0);
  Problem problem{args.expert_offsets.ptr<int32_t>(), args.expert_counts.ptr<int32_t>(),
                  local_experts, 0};
  // The row ranges are device-side data, but on the CPU they can be checked before any access.
  for (int64_t e = 0; e < local_experts; ++e) {
    const int64_t first = problem.offsets[e];
    const int64_t count = problem.counts[e];
    IRONMOE_CHECK(count >= 0 && (count == 0 || (first >= 0 && first + count <= rows)), "experts",
                  "expert_offsets/expert_counts: local expert ", e, " has rows [", first, ", ",
                  first + count, "), expected a range inside [0, ", rows, ")");
  }
  if (args.permuted_in.dtype == DType::bf16) {
    run_experts<uint16_t>(args, problem, threads);
  } else {
    run_experts<float>(args, problem, threads);
  }
}

}  // namespace ironmoe::cpu
