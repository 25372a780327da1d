// The whole layer: every routing kind and dtype against the float64 reference, boundary token
// counts, padding rows full of NaN, hostile and duplicated precomputed ids, expert-parallel shards
// that must sum to the single-rank result, the batched layout with overflow, strided rows, and
// determinism / batch invariance (bitwise).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "check/expect.h"
#include "check/harness.h"

namespace ironmoe::tools::check {
namespace {

constexpr int64_t kBoundarySizes[] = {0, 1, 255, 256, 257, 8191, 8192, 8193};
constexpr int kSampledTokens = 24;

std::vector<int32_t> hostile_ids(int64_t slots, int64_t num_experts, Random& random) {
  const int32_t e = static_cast<int32_t>(num_experts);
  const int32_t bad[] = {-1, e, e + 3, std::numeric_limits<int32_t>::min(),
                         std::numeric_limits<int32_t>::max()};
  std::vector<int32_t> ids(static_cast<size_t>(slots));
  for (int32_t& id : ids) {
    id = random.below(4) == 0 ? bad[random.below(std::size(bad))]
                              : static_cast<int32_t>(random.below(num_experts));
  }
  return ids;
}

// Precomputed routing: ids from `ids`, weights uniform in [0, 1).
void use_precomputed(LayerInput& input, std::vector<int32_t> ids, Random& random) {
  input.logits.clear();
  input.bias.clear();
  input.ids = std::move(ids);
  input.weights.resize(input.ids.size());
  for (float& w : input.weights) w = random.uniform(0.0f, 1.0f);
}

Diagnostics id_diagnostics(const std::vector<int32_t>& ids, int64_t valid_slots,
                           int64_t num_experts, int64_t begin, int64_t end) {
  Diagnostics diag{};
  for (int64_t s = 0; s < valid_slots; ++s) {
    if (ids[s] < 0 || ids[s] >= num_experts) {
      ++diag[kDiagIdOutOfRange];
    } else if (ids[s] < begin || ids[s] >= end) {
      ++diag[kDiagIdRemote];
    }
  }
  return diag;
}

MoeConfig softmax_config(int64_t experts, int64_t top_k, int64_t max_tokens, DType dtype) {
  return small_config(experts, top_k, max_tokens, dtype, RoutingConfig{});
}

void add_reference_cases(std::vector<Case>& cases) {
  for (DType dtype : {DType::bf16, DType::f32}) {
    for (const NamedRouting& named : every_routing(64)) {
      const RoutingConfig routing = named.routing;
      cases.push_back({"layer/" + named.name + "/" + dtype_name(dtype) + "/e64k8",
                       [=](Context& context, Random& random) {
                         const LayerInput input =
                             random_layer(small_config(64, 8, 100, dtype, routing), 100, random);
                         return check_layer(context, input, all_tokens(100)).outcome();
                       }});
    }
    cases.push_back({std::string("layer/softmax/") + dtype_name(dtype) + "/e16k4/gelu",
                     [=](Context& context, Random& random) {
                       MoeConfig config = softmax_config(16, 4, 77, dtype);
                       config.activation = Activation::gelu_and_mul;
                       const LayerInput input = random_layer(config, 77, random);
                       return check_layer(context, input, all_tokens(77)).outcome();
                     }});
  }
  cases.push_back({"layer/nan-inf-logits", [](Context& context, Random& random) {
                     // Valid rows with NaN and infinities: finite output equal to the reference,
                     // every non-finite logit counted.
                     LayerInput input =
                         random_layer(softmax_config(16, 4, 96, DType::bf16), 96, random);
                     const float specials[] = {NAN, INFINITY, -INFINITY};
                     Diagnostics diag{};
                     for (int64_t t = 0; t < 96; ++t) {
                       for (int64_t e = 0; e < 16; ++e) {
                         if (random.below(t % 3 == 0 ? 1 : 5) == 0) {
                           input.logits[t * 16 + e] = specials[random.below(3)];
                           ++diag[kDiagNonFiniteLogit];
                         }
                       }
                     }
                     LayerRun run;
                     Expect expect = check_layer(context, input, all_tokens(96), &run);
                     expect_diagnostics(expect, run.diagnostics, diag);
                     return expect.outcome();
                   }});
}

void add_size_cases(std::vector<Case>& cases) {
  for (int64_t tokens : kBoundarySizes) {
    cases.push_back(
        {"layer/size/T=" + std::to_string(tokens), [=](Context& context, Random& random) {
           const MoeConfig config =
               softmax_config(64, 8, std::max<int64_t>(tokens, 1), DType::bf16);
           LayerInput input = random_layer(config, tokens, random);
           input.diagnostics = tokens % 2 == 0;  // both with and without the buffer
           return check_layer(context, input, pick_tokens(tokens, kSampledTokens, random))
               .outcome();
         }});
  }
  cases.push_back(
      {"layer/size/T=257-of-max-8193", [](Context& context, Random& random) {
         // A workspace sized for 8193 tokens used for 257.
         const LayerInput input =
             random_layer(softmax_config(64, 8, 8193, DType::bf16), 257, random);
         return check_layer(context, input, pick_tokens(257, kSampledTokens, random)).outcome();
       }});
}

void add_padding_cases(std::vector<Case>& cases) {
  for (const NamedRouting& named : every_routing(64)) {
    const RoutingConfig routing = named.routing;
    cases.push_back({"layer/padding-nan/" + named.name, [=](Context& context, Random& random) {
                       // 64 rows of which 40 are valid; the padding holds NaN in x and logits.
                       // Valid rows must be bitwise those of a 40-row call, padded rows zero, and
                       // nothing in the padding counted.
                       const MoeConfig config = small_config(64, 8, 64, DType::bf16, routing);
                       LayerInput padded = random_layer(config, 64, random);
                       LayerInput plain = padded;
                       plain.tokens = 40;
                       plain.x.resize(40 * 128);
                       plain.logits.resize(40 * 64);
                       std::fill(padded.x.begin() + 40 * 128, padded.x.end(), NAN);
                       std::fill(padded.logits.begin() + 40 * 64, padded.logits.end(), NAN);
                       padded.num_valid = 40;
                       LayerRun run;
                       Expect expect = check_layer(context, padded, all_tokens(64), &run);
                       const LayerRun alone = run_layer(context, plain);
                       expect_bitwise_equal(expect, run.out.data(), alone.out.data(), 40 * 128,
                                            "valid rows vs a call without padding");
                       expect_diagnostics(expect, run.diagnostics, Diagnostics{});
                       return expect.outcome();
                     }});
  }
  cases.push_back(
      {"layer/padding-nan/precomputed-hostile-ids", [](Context& context, Random& random) {
         LayerInput input = random_layer(softmax_config(16, 4, 64, DType::bf16), 64, random);
         use_precomputed(input, hostile_ids(64 * 4, 16, random), random);
         std::fill(input.x.begin() + 33 * 128, input.x.end(), NAN);
         std::fill(input.weights.begin() + 33 * 4, input.weights.end(), NAN);
         input.num_valid = 33;
         LayerRun run;
         Expect expect = check_layer(context, input, all_tokens(64), &run);
         expect_diagnostics(expect, run.diagnostics, id_diagnostics(input.ids, 33 * 4, 16, 0, 16));
         return expect.outcome();
       }});
  for (int32_t num_valid : {0, -7, 65}) {
    cases.push_back({"layer/num-valid=" + std::to_string(num_valid) + "-of-64",
                     [=](Context& context, Random& random) {
                       LayerInput input =
                           random_layer(softmax_config(16, 4, 64, DType::f32), 64, random);
                       input.num_valid = num_valid;
                       return check_layer(context, input, all_tokens(64)).outcome();
                     }});
  }
}

void add_precomputed_cases(std::vector<Case>& cases) {
  cases.push_back(
      {"layer/precomputed/hostile-ids", [](Context& context, Random& random) {
         // Out-of-range ids contribute zero and are counted; the rest is computed.
         LayerInput input = random_layer(softmax_config(16, 4, 257, DType::f32), 257, random);
         use_precomputed(input, hostile_ids(257 * 4, 16, random), random);
         LayerRun run;
         Expect expect = check_layer(context, input, all_tokens(257), &run);
         expect_diagnostics(expect, run.diagnostics, id_diagnostics(input.ids, 257 * 4, 16, 0, 16));
         return expect.outcome();
       }});
  cases.push_back({"layer/precomputed/duplicate-ids", [](Context& context, Random& random) {
                     // Ids from 3 experts with k = 8: duplicates are independent slots.
                     LayerInput input =
                         random_layer(softmax_config(16, 8, 129, DType::f32), 129, random);
                     std::vector<int32_t> ids(129 * 8);
                     for (int32_t& id : ids) id = static_cast<int32_t>(random.below(3));
                     use_precomputed(input, ids, random);
                     return check_layer(context, input, all_tokens(129)).outcome();
                   }});
}

void add_ep_case(std::vector<Case>& cases) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    cases.push_back(
        {std::string("layer/ep-shards/") + dtype_name(dtype),
         [=](Context& context, Random& random) {
           // Four ranks over 16 experts (one empty): each shard matches the reference
           // restricted to its experts, and the shards sum to the single-rank output.
           const int64_t tokens = 200;
           const LayerInput whole =
               random_layer(softmax_config(16, 4, tokens, dtype), tokens, random);
           LayerRun single;
           Expect expect = check_layer(context, whole, all_tokens(tokens), &single);
           const RouteRun routed = reference_route(route_input_of(whole));
           std::vector<double> sum(single.out.size(), 0.0);
           const int64_t per_w13 = 2 * 64 * 128;
           const int64_t per_w2 = 128 * 64;
           for (const auto& [begin, end] :
                {std::pair<int64_t, int64_t>{0, 5}, {5, 5}, {5, 11}, {11, 16}}) {
             LayerInput shard = whole;
             shard.config.expert_begin = begin;
             shard.config.expert_end = end;
             shard.w13.assign(whole.w13.begin() + begin * per_w13,
                              whole.w13.begin() + end * per_w13);
             shard.w2.assign(whole.w2.begin() + begin * per_w2, whole.w2.begin() + end * per_w2);
             LayerRun run;
             Expect shard_expect = check_layer(context, shard, all_tokens(tokens), &run);
             if (!shard_expect.ok()) {
               expect.fail("shard [" + std::to_string(begin) + ", " + std::to_string(end) +
                           "): " + shard_expect.outcome().reason);
             }
             expect_diagnostics(expect, run.diagnostics,
                                id_diagnostics(routed.ids, tokens * 4, 16, begin, end));
             for (size_t i = 0; i < sum.size(); ++i) sum[i] += run.out[i];
           }
           // bf16: each shard rounds its output once, so the sum carries up to
           // three roundings more than the single rank.
           expect_rows_close(expect, single.out, 128, all_tokens(tokens), sum,
                             dtype == DType::bf16 ? 2e-2 : 1e-5);
           return expect.outcome();
         }});
  }
}

void add_batched_cases(std::vector<Case>& cases) {
  for (int64_t capacity : {2, 9, 100}) {
    cases.push_back({"layer/batched/capacity=" + std::to_string(capacity),
                     [=](Context& context, Random& random) {
                       // Slots beyond an expert's capacity (in slot order) are dropped: the
                       // reference sees them as id -1.
                       const int64_t tokens = 100;
                       MoeConfig config = softmax_config(16, 4, tokens, DType::f32);
                       config.layout = Layout::batched;
                       config.batched_capacity = capacity;
                       LayerInput input = random_layer(config, tokens, random);
                       const RouteRun routed = reference_route(route_input_of(input));
                       std::vector<int32_t> kept = routed.ids;
                       std::vector<int64_t> load(16, 0);
                       Diagnostics diag{};
                       for (int32_t& id : kept) {
                         if (load[id]++ >= capacity) {
                           id = -1;
                           ++diag[kDiagCapacityOverflow];
                         }
                       }
                       const LayerRun run = run_layer(context, input);
                       Expect expect;
                       expect_finite(expect, run.out, 128);
                       expect_rows_close(
                           expect, run.out, 128, all_tokens(tokens),
                           reference_layer(input, kept, routed.weights, all_tokens(tokens)),
                           layer_tolerance(DType::f32));
                       expect_diagnostics(expect, run.diagnostics, diag);
                       return expect.outcome();
                     }});
  }
}

void add_invariance_cases(std::vector<Case>& cases, Device device) {
  cases.push_back({"layer/determinism", [](Context& context, Random& random) {
                     const LayerInput input =
                         random_layer(softmax_config(64, 8, 300, DType::bf16), 300, random);
                     const LayerRun first = run_layer(context, input);
                     const LayerRun second = run_layer(context, input);
                     Expect expect;
                     expect_bitwise_equal(expect, first.out.data(), second.out.data(), 300 * 128,
                                          "second call");
                     return expect.outcome();
                   }});
  // A token's output is the same alone, in a batch of 257 and in a batch of 8, for each expert
  // kernel family the device has (automatic may pick another family for another batch size:
  // docs/contract.md D1).
  std::vector<ExpertKernel> kernels = {ExpertKernel::automatic};
  if (device.is_cuda()) {
    kernels = {ExpertKernel::grouped_gemm, ExpertKernel::weight_stream, ExpertKernel::cuda_cores};
  }
  for (ExpertKernel kernel : kernels) {
    const std::string name =
        device.is_cuda() ? std::string("layer/batch-invariance/") + expert_kernel_name(kernel)
                         : std::string("layer/batch-invariance");
    cases.push_back(
        {name, [kernel](Context& context, Random& random) {
           MoeConfig config = softmax_config(64, 8, 257, DType::bf16);
           config.expert_kernel = kernel;
           const LayerInput batch = random_layer(config, 257, random);
           const LayerRun full = run_layer(context, batch);
           Expect expect;
           for (int64_t t : pick_tokens(257, 6, random)) {
             for (int64_t size : {1, 8}) {
               const int64_t first = std::min<int64_t>(t, 257 - size);
               LayerInput part = batch;
               part.tokens = size;
               part.x.assign(batch.x.begin() + first * 128, batch.x.begin() + (first + size) * 128);
               part.logits.assign(batch.logits.begin() + first * 64,
                                  batch.logits.begin() + (first + size) * 64);
               const LayerRun run = run_layer(context, part);
               expect_bitwise_equal(
                   expect, run.out.data() + (t - first) * 128, full.out.data() + t * 128, 128,
                   "token " + std::to_string(t) + " in a batch of " + std::to_string(size));
             }
           }
           return expect.outcome();
         }});
  }
  cases.push_back({"layer/strided-rows", [](Context& context, Random& random) {
                     // x and out as rows of wider buffers: same result, gaps left untouched.
                     LayerInput input =
                         random_layer(softmax_config(16, 4, 70, DType::bf16), 70, random);
                     const LayerRun plain = run_layer(context, input);
                     input.x_row_stride = 128 + 24;
                     input.out_row_stride = 128 + 8;
                     const LayerRun strided = run_layer(context, input);
                     Expect expect;
                     expect_bitwise_equal(expect, strided.out.data(), plain.out.data(), 70 * 128,
                                          "strided output");
                     for (float v : strided.out_gaps) {
                       if (!std::isnan(v)) {
                         expect.fail("a gap between output rows was written");
                         break;
                       }
                     }
                     return expect.outcome();
                   }});
}

}  // namespace

// FP8 experts, every scheme: boundary batch sizes (8192 included, where an engine once indexed a
// scale array by token count), hostile ids and padding rows, against the FP8 reference.
void add_fp8_cases(std::vector<Case>& cases) {
  for (QuantScheme quant :
       {QuantScheme::fp8_tensor, QuantScheme::fp8_channel, QuantScheme::fp8_block}) {
    const std::string scheme = quant_scheme_name(quant);
    for (int64_t tokens : {int64_t{1}, int64_t{257}, int64_t{8192}}) {
      cases.push_back({"layer/fp8/" + scheme + "/T=" + std::to_string(tokens),
                       [=](Context& context, Random& random) {
                         MoeConfig config = softmax_config(16, 4, tokens, DType::bf16);
                         config.quant = quant;
                         LayerInput input = random_layer(config, tokens, random);
                         quantize_weights_of(input);
                         return check_layer(context, input,
                                            pick_tokens(tokens, kSampledTokens, random))
                             .outcome();
                       }});
    }
    cases.push_back(
        {"layer/fp8/" + scheme + "/hostile-ids-and-padding", [=](Context& context, Random& random) {
           MoeConfig config = softmax_config(16, 4, 96, DType::bf16);
           config.quant = quant;
           LayerInput input = random_layer(config, 96, random);
           use_precomputed(input, hostile_ids(96 * 4, 16, random), random);
           input.num_valid = 80;
           quantize_weights_of(input);
           LayerRun run;
           Expect expect = check_layer(context, input, all_tokens(96), &run);
           expect_diagnostics(expect, run.diagnostics,
                              id_diagnostics(input.ids, 80 * 4, 16, 0, 16));
           return expect.outcome();
         }});
  }
}

std::vector<Case> layer_cases(Device device) {
  std::vector<Case> cases;
  add_reference_cases(cases);
  add_size_cases(cases);
  add_padding_cases(cases);
  add_precomputed_cases(cases);
  add_ep_case(cases);
  add_batched_cases(cases);
  add_fp8_cases(cases);
  add_invariance_cases(cases, device);
  return cases;
}

}  // namespace ironmoe::tools::check
