#pragma once
// Stage 1: router logits -> k distinct experts and their weights per token.
//
// Contract (docs/contract.md, "Routing"): NaN ranks below every number, ties go to the lower
// expert index, so k distinct experts come back for every row when k <= E; weights are finite;
// a row with no usable logit (all NaN / -inf) gets experts 0..k-1 with weights 1/k; rows at or
// beyond *num_valid_tokens get ids -1 and weights 0.
#include "ironmoe/config.h"
#include "ironmoe/stream.h"
#include "ironmoe/tensor.h"

namespace ironmoe {

struct RouteArgs {
  TensorView logits;           // [T, E] f32 | bf16 | f16, rows may be strided
  TensorView correction_bias;  // [E] f32; grouped_topk only (optional: zeros when absent)
  TensorView topk_ids;         // out [T, k] i32, contiguous
  TensorView topk_weights;     // out [T, k] f32, contiguous
  // Optional, on the stage's device: rows >= *num_valid_tokens are padding.
  const int32_t* num_valid_tokens = nullptr;
  int32_t* diagnostics = nullptr;  // optional int32[kDiagnosticCount] on the stage's device
};

void route(const RoutingConfig& routing, const RouteArgs& args, const Stream& stream);

}  // namespace ironmoe
