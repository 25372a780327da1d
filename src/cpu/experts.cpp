// CPU expert MLPs in the storage dtype (bf16, f32) on the tile matmul of tile_matmul.h; FP8
// experts are experts_fp8.cpp.
#include <algorithm>
#include <cstdint>

#include "core/check.h"
#include "cpu/cpu_backend.h"
#include "cpu/experts_fp8.h"
#include "cpu/parallel.h"
#include "cpu/tile_matmul.h"

namespace ironmoe::cpu {
namespace {

using namespace tiles;

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
  gate_up_pass(
      problem, inter, hidden, PlainRows<Storage>{x, hidden},
      [&](int64_t e) {
        return PlainRows<Storage>{w13 + e * 2 * inter * hidden, hidden};
      },
      [&](int64_t row, int64_t n, float gate, float up) {
        store(h + row * inter, n, activate(args.activation, gate) * up);
      },
      threads);
  // GEMM2: y = h w2^T, rounded to the storage dtype.
  down_pass(
      problem, hidden, inter, PlainRows<Storage>{h, inter},
      [&](int64_t e) {
        return PlainRows<Storage>{w2 + e * hidden * inter, inter};
      },
      [&](int64_t row, int64_t n, float value) { store(y + row * hidden, n, value); }, threads);
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
  if (args.quant != QuantScheme::none) {
    experts_fp8(args, problem, threads);
  } else if (args.permuted_in.dtype == DType::bf16) {
    run_experts<uint16_t>(args, problem, threads);
  } else {
    run_experts<float>(args, problem, threads);
  }
}

}  // namespace ironmoe::cpu
