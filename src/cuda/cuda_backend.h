#pragma once
// The CUDA backend. Arguments arrive validated by the public entry points in src/api (shapes,
// dtypes, devices); each function here adds its own CUDA-specific checks (alignment, limits),
// launches on `stream` and never synchronises with the host.
#include <cstddef>
#include <cstdint>

#include "ironmoe/combine.h"
#include "ironmoe/config.h"
#include "ironmoe/experts.h"
#include "ironmoe/gather.h"
#include "ironmoe/plan.h"
#include "ironmoe/route.h"

namespace ironmoe::cuda {

bool available();  // a CUDA device is visible
void route(const RoutingConfig& routing, const RouteArgs& args, void* stream);
size_t plan_scratch_bytes(int64_t max_tokens, int64_t top_k, int64_t num_local_experts,
                          int device_index);
void plan(const PlanArgs& args, void* stream);
void gather(const GatherArgs& args, void* stream);
size_t expert_scratch_bytes(int64_t max_rows, int64_t hidden, int64_t intermediate,
                            int64_t num_local_experts, DType dtype, int device_index);
void experts(const ExpertArgs& args, void* stream);
void combine(const CombineArgs& args, void* stream);

}  // namespace ironmoe::cuda
