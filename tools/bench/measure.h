#pragma once
// One row of the benchmark: the layer for one shape at one token count, timed, checked against
// the reference and set against the measured floor.
#include <cstdint>
#include <iterator>
#include <string>

#include "bench/peak.h"
#include "bench/problem.h"
#include "bench/timing.h"
#include "common/device_memory.h"

namespace ironmoe::tools {

struct BenchSettings {
  int iters = 0;            // 0: the timer's default for the device
  int check_tokens = 3;     // tokens compared with the reference per row (0: no check)
  bool flush_cache = true;  // CPU: evict the last-level cache before each timed call
  bool breakdown = false;   // also time each stage of the layer on its own
};

// The stages of Layer::forward, each timed alone (a CUDA graph of that stage only on the GPU),
// in the order forward() runs them; the experts stage in its two phases (ExpertPhase): gemm1 is
// GEMM1 with the activation (and, for FP8 experts, the quantisation of both GEMM inputs where
// the kernels fuse it there), gemm2 the rest.
inline const char* const kStageNames[] = {"route", "plan", "gather", "gemm1", "gemm2", "combine"};
constexpr int kStageCount = static_cast<int>(std::size(kStageNames));

struct BenchRow {
  std::string shape;
  MoeConfig config;  // the shape's config as run (max_tokens = tokens)
  int64_t tokens = 0;
  std::string skipped;       // why the row was not run; empty when it was
  int64_t experts_used = 0;  // distinct experts the routing selected
  int64_t valid_slots = 0;   // (token, choice) pairs with an expert, i.e. computed
  Timing timing;
  double bytes = 0.0;  // selected experts' weights + x, logits, out
  double flops = 0.0;  // 2 * valid_slots * 3 * H * I
  double floor_s = 0.0;
  double max_rel_error = -1.0;  // < 0: not checked
  size_t workspace_bytes = 0;
  Timing stages[kStageCount];  // with BenchSettings::breakdown; iters 0 where a stage did not run
  // With breakdown: route, plan and combine in one call (one CUDA graph on the GPU), what the
  // staged layer pays for them beside gather and experts without a graph launch per stage (where
  // forward() takes the fused decode path it runs route alone and no plan or combine); iters 0
  // without route.
  Timing route_plan_combine;
};

BenchRow measure_row(const Problem& problem, int64_t tokens, const BenchSettings& settings,
                     const MachinePeak& peak, Executor& executor, CacheFlusher* flusher);

}  // namespace ironmoe::tools
