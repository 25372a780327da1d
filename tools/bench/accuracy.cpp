#include "bench/accuracy.h"

#include <algorithm>

#include "common/fp8_weights.h"
#include "common/host_data.h"
#include "reference_fp8.h"
#include "reference_moe.h"

namespace ironmoe::tools {

std::vector<int64_t> sample_tokens(int64_t tokens, int count) {
  std::vector<int64_t> list;
  if (tokens <= 0 || count <= 0) return list;
  list.push_back(0);
  if (count >= 2 && tokens >= 2) list.push_back(tokens - 1);
  for (int i = 1; static_cast<int>(list.size()) < count && i < count; ++i) {
    const int64_t t = tokens * i / count;
    if (std::find(list.begin(), list.end(), t) == list.end()) list.push_back(t);
  }
  return list;
}

double sampled_layer_error(const Problem& problem, const std::vector<int32_t>& ids,
                           const std::vector<float>& weights, const DeviceBuffer& out,
                           const std::vector<int64_t>& token_list) {
  const MoeConfig& shape = problem.shape.config;
  const int64_t hidden = shape.hidden;
  const int64_t k = shape.top_k;
  const auto w13_elements = static_cast<size_t>(2 * shape.intermediate * hidden);
  const auto w2_elements = static_cast<size_t>(hidden * shape.intermediate);
  const bool round_intermediate = problem.dtype == DType::bf16;

  // The reference runs one expert at a time (a one-expert config), so only one expert's weights
  // are ever widened to float on the host, however large the model.
  MoeConfig one_expert = shape;
  one_expert.num_experts = 1;
  one_expert.expert_begin = 0;
  one_expert.expert_end = -1;
  one_expert.max_tokens = 1;

  std::vector<double> reference(token_list.size() * static_cast<size_t>(hidden), 0.0);
  std::vector<float> got(reference.size());
  std::vector<double> slot_out(static_cast<size_t>(hidden));
  const QuantScheme quant = shape.quant;
  const int64_t w13_scales = fp8_scales_per_expert(quant, 2 * shape.intermediate, hidden);
  const int64_t w2_scales = fp8_scales_per_expert(quant, hidden, shape.intermediate);
  std::vector<float> input_scales;
  if (quant == QuantScheme::fp8_tensor) {
    input_scales = download_as(problem.input_scales, 2, DType::f32);
  }
  for (size_t i = 0; i < token_list.size(); ++i) {
    const int64_t t = token_list[i];
    const std::vector<float> x = download_as(problem.x, static_cast<size_t>(hidden), problem.dtype,
                                             static_cast<size_t>(t * hidden));
    const std::vector<float> row = download_as(out, static_cast<size_t>(hidden), problem.dtype,
                                               static_cast<size_t>(t * hidden));
    std::copy(row.begin(), row.end(), got.begin() + static_cast<std::ptrdiff_t>(i * hidden));
    for (int64_t j = 0; j < k; ++j) {
      const int32_t expert = ids[static_cast<size_t>(t * k + j)];
      if (expert < 0 || expert >= shape.num_experts) continue;  // contributes zero
      std::vector<int32_t> slot_ids(static_cast<size_t>(k), -1);
      slot_ids[static_cast<size_t>(j)] = 0;
      if (quant == QuantScheme::none) {
        const std::vector<float> w13 =
            download_as(problem.w13, w13_elements, problem.dtype, expert * w13_elements);
        const std::vector<float> w2 =
            download_as(problem.w2, w2_elements, problem.dtype, expert * w2_elements);
        reference::layer(one_expert, 1, x.data(), slot_ids.data(), weights.data() + t * k,
                         w13.data(), w2.data(), 1, {0}, round_intermediate, slot_out.data());
      } else {
        // Every scheme run here quantises each slot's rows on their own (fp8_tensor with static
        // scales), so one slot at a time gives the layer's result.
        reference::Fp8Weights w;
        w.scheme = quant == QuantScheme::fp8_channel ? reference::Fp8Scheme::per_channel
                   : quant == QuantScheme::fp8_block ? reference::Fp8Scheme::block
                                                     : reference::Fp8Scheme::per_tensor;
        w.w13.resize(w13_elements);
        w.w2.resize(w2_elements);
        problem.w13.download(w.w13.data(), w13_elements, expert * w13_elements);
        problem.w2.download(w.w2.data(), w2_elements, expert * w2_elements);
        w.w13_scale = download_as(problem.w13_scale, static_cast<size_t>(w13_scales), DType::f32,
                                  static_cast<size_t>(expert * w13_scales));
        w.w2_scale = download_as(problem.w2_scale, static_cast<size_t>(w2_scales), DType::f32,
                                 static_cast<size_t>(expert * w2_scales));
        reference::layer_fp8(one_expert, 1, x.data(), slot_ids.data(), weights.data() + t * k, w,
                             input_scales.empty() ? nullptr : input_scales.data(), 1, {0},
                             slot_out.data());
      }
      for (int64_t c = 0; c < hidden; ++c) {
        reference[i * static_cast<size_t>(hidden) + static_cast<size_t>(c)] += slot_out[c];
      }
    }
  }
  return reference::max_relative_error(reference.data(), got.data(),
                                       static_cast<int64_t>(token_list.size()), hidden);
}

}  // namespace ironmoe::tools
