#pragma once
// The CPU backend: the reference semantics of every stage. Arguments arrive validated by the
// public entry points in src/api; `threads` may be null (run on the calling thread).
#include "ironmoe/combine.h"
#include "ironmoe/config.h"
#include "ironmoe/experts.h"
#include "ironmoe/gather.h"
#include "ironmoe/plan.h"
#include "ironmoe/quantize.h"
#include "ironmoe/route.h"

namespace ironmoe::cpu {

void route(const RoutingConfig& routing, const RouteArgs& args, ThreadPool* threads);
void plan(const PlanArgs& args, ThreadPool* threads);
void gather(const GatherArgs& args, ThreadPool* threads);
void experts(const ExpertArgs& args, ThreadPool* threads);
void combine(const CombineArgs& args, ThreadPool* threads);
void fp8_input_scale(const Fp8InputScaleArgs& args, ThreadPool* threads);

}  // namespace ironmoe::cpu
