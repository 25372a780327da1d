#pragma once
// The whole MoE layer: route -> plan -> gather -> experts -> combine, from one caller-provided
// workspace. forward() allocates nothing and never waits for the device, so on CUDA it can be
// captured in a graph; a graph captured for T tokens replays correctly for any contents and, with
// num_valid_tokens, for any smaller batch.
#include <cstddef>

#include "ironmoe/combine.h"
#include "ironmoe/config.h"
#include "ironmoe/experts.h"
#include "ironmoe/gather.h"
#include "ironmoe/plan.h"
#include "ironmoe/quantize.h"
#include "ironmoe/route.h"
#include "ironmoe/stream.h"
#include "ironmoe/tensor.h"

namespace ironmoe {

struct Inputs {
  TensorView x;  // [T, H], T <= max_tokens
  // Either router logits [T, E] ...
  TensorView router_logits;
  TensorView correction_bias;  // [E] f32, grouped_topk only
  // ... or precomputed routing: ids [T, k] i32 (any values) and weights [T, k] f32.
  TensorView topk_ids;
  TensorView topk_weights;
  const int32_t* num_valid_tokens = nullptr;  // optional, on the layer's device
  int32_t* diagnostics = nullptr;             // optional int32[kDiagnosticCount]
};

struct Weights {
  TensorView w13;  // [E_local, 2I, H]: config.dtype, or f8e4m3 with an fp8 config.quant
  TensorView w2;   // [E_local, H, I]
  // FP8 only (shapes in experts.h ExpertArgs, docs/formats.md "FP8 experts"): f32 weight scales
  // and, for fp8_tensor, optional static activation scales f32 [1]. Without a static GEMM1 input
  // scale the layer computes it over the valid tokens' rows (fp8_input_scale, quantize.h).
  TensorView w13_scale;
  TensorView w2_scale;
  TensorView w13_input_scale;
  TensorView w2_input_scale;
};

struct Outputs {
  TensorView out;  // [T, H], x's dtype
};

struct Workspace {
  void* data = nullptr;
  size_t bytes = 0;
};

// A pure function of the config and the device: the bytes forward() needs for max_tokens.
size_t workspace_bytes(const MoeConfig& config, Device device);

// One forward() call taken apart: the arguments of each stage, validated and carved from the
// workspace. forward() runs route (when has_route), plan, gather, experts and combine with these,
// in that order, on one stream; an engine may run them itself to put work between the stages, and
// ironmoe-bench --breakdown times them one by one. One exception, invisible in the result: on
// CUDA, a decode batch (T * k <= 32 slots, contiguous layout, experts that would stream weights)
// runs plan through combine as two fused kernels, whose output equals these stages' bit for bit;
// the workspace's plan and permuted buffers are then not written (IRONMOE_FUSED_DECODE=0 turns
// the fusion off). With fp8_tensor and no static GEMM1 input scale, input_scale runs before the
// experts (after route, or anywhere before experts). FP8 layers have no gather stage
// (has_gather false): their experts quantise GEMM1's input rows straight from x
// (ExpertArgs::gathered).
struct LayerStages {
  bool has_route = false;  // false: precomputed topk_ids / topk_weights
  RoutingConfig routing;
  RouteArgs route;
  bool has_input_scale = false;  // fp8_tensor without a static w13_input_scale: run first
  Fp8InputScaleArgs input_scale;
  PlanArgs plan;
  bool has_gather = true;  // false: FP8 experts read x through the plan themselves
  GatherArgs gather;
  ExpertArgs experts;
  CombineArgs combine;
};

class Layer {
 public:
  Layer(const MoeConfig& config, Device device);  // validates the config; allocates nothing

  const MoeConfig& config() const { return config_; }
  Device device() const { return device_; }
  size_t workspace_bytes() const;

  void forward(const Inputs& inputs, const Weights& weights, const Outputs& outputs,
               const Workspace& workspace, const Stream& stream) const;
  // What forward() would run, without running it; throws what forward() would throw.
  LayerStages stages(const Inputs& inputs, const Weights& weights, const Outputs& outputs,
                     const Workspace& workspace, const Stream& stream) const;

 private:
  MoeConfig config_;
  Device device_;
};

}  // namespace ironmoe
