// The FP8 experts' argument checks (validate.h), shared by experts() and Layer.
#include <cstdio>
#include <initializer_list>

#include "api/validate.h"
#include "core/fp8_scales.h"

namespace ironmoe::api {
namespace {

// A weight scale tensor of `quant` for [E_local, rows, cols] weights.
void check_weight_scale(const char* where, const char* name, const TensorView& scale,
                        QuantScheme quant, int64_t local_experts, int64_t rows, int64_t cols,
                        Device device) {
  IRONMOE_CHECK(present(scale), where, name, ": expected the ", quant_scheme_name(quant),
                " weight scales (f32), got none");
  if (quant == QuantScheme::fp8_tensor) {
    check_tensor(where, name, scale, {DType::f32, {local_experts}}, device);
  } else if (quant == QuantScheme::fp8_channel) {
    check_tensor(where, name, scale, {DType::f32, {local_experts, rows}}, device);
  } else {
    check_tensor(where, name, scale,
                 {DType::f32, {local_experts, core::fp8_blocks(rows), core::fp8_blocks(cols)}},
                 device);
  }
}

// "<prefix><name>" for messages, in a fixed buffer: these checks run on every forward(), which
// allocates nothing (docs/contract.md L4), and a prefixed name outgrows std::string's inline space.
class ArgName {
 public:
  ArgName(const char* prefix, const char* name) {
    std::snprintf(text_, sizeof(text_), "%s%s", prefix, name);
  }
  const char* c_str() const { return text_; }

 private:
  char text_[64];
};

}  // namespace

void check_quant_scheme(const char* where, QuantScheme quant) {
  IRONMOE_CHECK(quant == QuantScheme::none || quant == QuantScheme::fp8_tensor ||
                    quant == QuantScheme::fp8_channel || quant == QuantScheme::fp8_block,
                where, "quant: expected none, fp8_tensor, fp8_channel or fp8_block, got ",
                static_cast<int>(quant));
}

void check_quantized_weights(const char* where, const QuantizedWeightViews& w, QuantScheme quant,
                             DType dtype, int64_t local_experts, int64_t hidden,
                             int64_t intermediate, Device device) {
  const ArgName w13_name(w.prefix, "w13");
  const ArgName w2_name(w.prefix, "w2");
  const DType weight_dtype = quant == QuantScheme::none ? dtype : DType::f8e4m3;
  IRONMOE_CHECK(present(w.w13), where, w13_name.c_str(),
                ": expected an [E_local, 2I, H] tensor, got none");
  check_tensor(where, w13_name.c_str(), w.w13,
               {weight_dtype, {local_experts, 2 * intermediate, hidden}}, device);
  check_tensor(where, w2_name.c_str(), w.w2, {weight_dtype, {local_experts, hidden, intermediate}},
               device);
  const ArgName names[4] = {{w.prefix, "w13_scale"},
                            {w.prefix, "w2_scale"},
                            {w.prefix, "w13_input_scale"},
                            {w.prefix, "w2_input_scale"}};
  if (quant == QuantScheme::none) {
    const TensorView* scales[4] = {&w.w13_scale, &w.w2_scale, &w.w13_input_scale,
                                   &w.w2_input_scale};
    for (int i = 0; i < 4; ++i) {
      IRONMOE_CHECK(!present(*scales[i]), where, names[i].c_str(),
                    ": given, but quant is none (scales belong to an fp8 scheme)");
    }
    return;
  }
  check_weight_scale(where, names[0].c_str(), w.w13_scale, quant, local_experts, 2 * intermediate,
                     hidden, device);
  check_weight_scale(where, names[1].c_str(), w.w2_scale, quant, local_experts, hidden,
                     intermediate, device);
  const TensorView* inputs[2] = {&w.w13_input_scale, &w.w2_input_scale};
  for (int i = 0; i < 2; ++i) {
    if (!present(*inputs[i])) continue;
    IRONMOE_CHECK(quant == QuantScheme::fp8_tensor, where, names[2 + i].c_str(),
                  ": static activation scales are for fp8_tensor only, got one with ",
                  quant_scheme_name(quant));
    check_tensor(where, names[2 + i].c_str(), *inputs[i], {DType::f32, {1}}, device);
  }
}

}  // namespace ironmoe::api
