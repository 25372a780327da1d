// ironmoe-check: runs the robustness matrix of docs/contract.md on one device and prints every
// case with PASS or FAIL and the reason; exits non-zero when any case fails.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "check/harness.h"
#include "common/args.h"
#include "common/device_memory.h"
#include "common/host_data.h"

namespace ironmoe::tools::check {
namespace {

// Each case draws from its own stream, keyed by its name, so a case gets the same data whether it
// runs alone (--filter) or in the full matrix.
uint64_t name_hash(const std::string& name) {
  uint64_t hash = 1469598103934665603ull;  // FNV-1a
  for (char c : name) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ull;
  }
  return hash;
}

std::vector<Case> all_cases(Device device) {
  std::vector<Case> cases;
  for (auto* group : {routing_cases, plan_cases, layer_cases, error_cases, graph_cases}) {
    std::vector<Case> part = group(device);
    cases.insert(cases.end(), part.begin(), part.end());
  }
  return cases;
}

int run(const ArgParser& args) {
  const Device device = resolve_device(args.value("device", "auto"));
  const auto seed = static_cast<uint64_t>(parse_int(args.value("seed", "1"), "--seed"));
  const std::string filter = args.value("filter");
  const std::string exclude = args.value("exclude");
  const bool verbose = args.has("verbose");
  std::vector<Case> cases;
  for (Case& c : all_cases(device)) {
    const bool kept = filter.empty() || c.name.find(filter) != std::string::npos;
    const bool dropped = !exclude.empty() && c.name.find(exclude) != std::string::npos;
    if (kept && !dropped) cases.push_back(std::move(c));
  }
  if (args.has("list")) {
    for (const Case& c : cases) std::cout << c.name << "\n";
    return 0;
  }

  Context context(device, seed);
  std::cout << "ironmoe-check on " << device_label(device) << ", seed " << seed << ", "
            << cases.size() << " cases\n";
  int failed = 0;
  const auto start = std::chrono::steady_clock::now();
  for (const Case& c : cases) {
    Random random(stream_seed(seed, name_hash(c.name)));
    const auto case_start = std::chrono::steady_clock::now();
    Outcome outcome;
    try {
      outcome = c.run(context, random);
    } catch (const std::exception& e) {
      outcome = {false, std::string("unexpected exception: ") + e.what()};
    }
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - case_start)
            .count();
    char timing[32];
    std::snprintf(timing, sizeof timing, "%8.1f ms", ms);
    std::cout << (outcome.passed ? "PASS  " : "FAIL  ") << timing << "  " << c.name;
    if (!outcome.passed || (verbose && !outcome.reason.empty())) {
      std::cout << "\n      " << outcome.reason;
    }
    std::cout << "\n" << std::flush;
    failed += outcome.passed ? 0 : 1;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "\n"
            << cases.size() - static_cast<size_t>(failed) << " passed, " << failed << " failed ("
            << static_cast<int>(seconds + 0.5) << " s)\n";
  return failed == 0 ? 0 : 1;
}

}  // namespace
}  // namespace ironmoe::tools::check

int main(int argc, char** argv) {
  using ironmoe::tools::ArgParser;
  ArgParser parser("ironmoe-check",
                   "Runs ironmoe's robustness matrix (routing of NaN/Inf/tied rows, hostile and "
                   "duplicated ids,\nexpert-parallel shards, boundary token counts, NaN padding, "
                   "every routing kind, argument\nvalidation, CUDA graph replays) and prints PASS "
                   "or FAIL per case. Exit status 1 on any FAIL.");
  parser.add_option("device", "DEV", "auto (default: cuda when a GPU is visible), cpu or cuda");
  parser.add_option("filter", "TEXT", "run only the cases whose name contains TEXT");
  parser.add_option("exclude", "TEXT", "skip the cases whose name contains TEXT");
  parser.add_option("seed", "N", "seed of the random data (default 1)");
  parser.add_flag("list", "list the case names and exit");
  parser.add_flag("verbose", "also print what passing cases report (e.g. error messages)");
  parser.add_flag("help", "show this text");
  std::string error;
  if (!parser.parse(argc, argv, &error)) {
    std::cerr << "ironmoe-check: " << error << "\n\n" << parser.usage();
    return 2;
  }
  if (parser.has("help")) {
    std::cout << parser.usage();
    return 0;
  }
  try {
    return ironmoe::tools::check::run(parser);
  } catch (const std::exception& e) {
    std::cerr << "ironmoe-check: " << e.what() << "\n";
    return 2;
  }
}
