// Builds without CUDA have no graph capture cases (cases_graph_cuda.cpp holds them).
#include "check/harness.h"

namespace ironmoe::tools::check {

std::vector<Case> graph_cases(Device) { return {}; }

}  // namespace ironmoe::tools::check
