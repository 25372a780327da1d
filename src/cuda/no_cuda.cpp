// Built when ironmoe is configured without CUDA: every CUDA entry point explains itself.
#include "core/check.h"
#include "core/fp8_scratch.h"
#include "cuda/cuda_backend.h"

namespace ironmoe::cuda {
namespace {
[[noreturn]] void unavailable(const char* where) {
  core::fail(where,
             "this build of ironmoe has no CUDA backend (configure with nvcc on PATH or "
             "-DIRONMOE_CUDA=ON)");
}
}  // namespace

bool available() { return false; }
void route(const RoutingConfig&, const RouteArgs&, void*) { unavailable("route"); }
size_t plan_scratch_bytes(int64_t, int64_t, int64_t, int) { return 0; }
void plan(const PlanArgs&, void*) { unavailable("plan"); }
void gather(const GatherArgs&, void*) { unavailable("gather"); }
size_t expert_scratch_bytes(int64_t, int64_t, int64_t, int64_t, DType, int) { return 0; }
void experts(const ExpertArgs&, void*) { unavailable("experts"); }
void combine(const CombineArgs&, void*) { unavailable("combine"); }
size_t expert_scratch_bytes_fp8(int64_t max_rows, int64_t hidden, int64_t intermediate, int64_t,
                                DType, QuantScheme quant, int) {
  return core::fp8_scratch(quant, max_rows, hidden, intermediate).total_bytes;
}
void experts_fp8(const ExpertArgs&, void*) { unavailable("experts"); }
void fp8_input_scale(const Fp8InputScaleArgs&, void*) { unavailable("fp8_input_scale"); }
bool fused_decode_applies(const MoeConfig&, const LayerStages&) { return false; }
bool try_fused_decode(const MoeConfig&, const LayerStages&, void*) { return false; }

}  // namespace ironmoe::cuda
