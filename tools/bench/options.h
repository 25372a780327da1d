#pragma once
// ironmoe-bench's command line: what to run (shapes x token counts), where and how.
#include <cstdint>
#include <string>
#include <vector>

#include "bench/measure.h"
#include "bench/problem.h"
#include "ironmoe/types.h"

namespace ironmoe::tools {

struct BenchOptions {
  std::vector<BenchShape> shapes;
  std::vector<int64_t> tokens;
  Device device = Device::cpu();
  DType dtype = DType::bf16;
  QuantScheme quant = QuantScheme::none;  // applied to every shape's config
  uint64_t seed = 1;
  int threads = 0;  // CPU worker threads (0: all cores)
  BenchSettings settings;
  std::string json_path;
  std::string command_line;  // recorded in the JSON output
};

// Default sweeps when no shape or token list is given (the CPU's fits in about a minute on a
// 2-core machine; the GPU's covers every preset from decode to prefill).
inline const char* const kCpuDefaultPreset = "qwen3-30b-a3b";
inline const std::vector<int64_t> kCpuDefaultTokens = {1, 4, 16, 64};
inline const std::vector<int64_t> kCudaDefaultTokens = {1, 16, 64, 256, 1024, 4096};

// Parses argv. Returns false when the program should exit: after --help (*exit_code 0) or on a
// usage error (message on stderr, *exit_code 2).
bool parse_bench_options(int argc, const char* const* argv, BenchOptions* options, int* exit_code);

}  // namespace ironmoe::tools
