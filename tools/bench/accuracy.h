#pragma once
// The bench's correctness column: the layer's output for a few sampled tokens against the float64
// reference (reference::layer), fed the same routing the layer computed.
#include <cstdint>
#include <vector>

#include "bench/problem.h"

namespace ironmoe::tools {

// Up to `count` distinct tokens of [0, tokens): the first, the last, then evenly spread ones.
std::vector<int64_t> sample_tokens(int64_t tokens, int count);

// max relative error (reference::max_relative_error) over the sampled tokens' output rows.
// `ids` and `weights` ([tokens, k]) are the routing the layer used; `out` holds its output.
double sampled_layer_error(const Problem& problem, const std::vector<int32_t>& ids,
                           const std::vector<float>& weights, const DeviceBuffer& out,
                           const std::vector<int64_t>& token_list);

}  // namespace ironmoe::tools
