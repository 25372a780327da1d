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
#include "ironmoe/layer.h"
#include "ironmoe/plan.h"
#include "ironmoe/quantize.h"
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
// FP8 experts (experts_fp8.cu; experts() hands them over) and the layer's per-tensor input scale.
// The FP8 scratch: core::fp8_scratch, or the Hopper FP8 path's own layout where that path can
// run (sm_90, bf16, H and I multiples of 16), whichever is larger.
size_t expert_scratch_bytes_fp8(int64_t max_rows, int64_t hidden, int64_t intermediate,
                                int64_t num_local_experts, DType dtype, QuantScheme quant,
                                int device_index);
void experts_fp8(const ExpertArgs& args, void* stream);
void fp8_input_scale(const Fp8InputScaleArgs& args, void* stream);

// Layer::forward's fused decode path (fused_decode.cu): plan, gather, experts and combine as two
// kernels when the batch has at most kFusedDecodeMaxSlots slots and the experts stage would stream
// weights (or config.expert_kernel forces weight_stream), on the contiguous layout. Same result
// as the stages, bit for bit. IRONMOE_FUSED_DECODE=0 in the environment turns it off.
// try_fused_decode launches it and returns true when it applies; otherwise it does nothing.
inline constexpr int64_t kFusedDecodeMaxSlots = 32;
// The fused down kernel streams an expert's w2 once per slot of that expert, so a second token on
// the expert finds w2 in L2 only when it is small. With more than one token, experts whose w2
// exceeds this take the staged path, which reads each weight once per four rows (mixtral-8x7b,
// 112 MiB, T = 2 on an H200: fused 321.4 us, staged 299.9; docs/performance.md).
inline constexpr int64_t kFusedDecodeMaxRereadBytes = int64_t{16} << 20;
bool fused_decode_applies(const MoeConfig& config, const LayerStages& stages);
bool try_fused_decode(const MoeConfig& config, const LayerStages& stages, void* stream);

}  // namespace ironmoe::cuda
