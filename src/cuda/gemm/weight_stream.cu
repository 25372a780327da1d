// Weight-streaming expert kernels (weight_stream.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/cuda_check.h"
#include "cuda/gemm/expert_rows.cuh"
#include "cuda/gemm/weight_stream.cuh"
#include "cuda/gemm/weight_stream.h"
#include "cuda/launch.cuh"
#include "cuda/storage.cuh"

namespace ironmoe::cuda::gemm {
namespace {

using namespace streaming;

// Down's output columns per warp: one weight row each, four read at a time, so a warp has 8 loads
// in flight as in gate/up.
constexpr int kDownColumns = 4;
// H and I are multiples of kVec (weight_stream_supports) and a warp's first column a multiple of
// its column count, so a warp's columns all exist once the first does.
static_assert(kVec % kGateUpColumns == 0 && kVec % kDownColumns == 0);

template <class T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    stream_gate_up(ExpertRows rows, const T* __restrict__ a, int64_t a_stride,
                   const T* __restrict__ w13, int64_t w13_expert_stride, T* __restrict__ h,
                   int64_t h_stride, int64_t intermediate, int64_t hidden, Activation activation) {
  wait_for_previous_kernel();
  extern __shared__ int active[];
  constexpr int kColumns = kGateUpColumns;
  int64_t expert = 0, first = 0;
  RowRange range;
  if (!warp_task<kColumns>(rows, intermediate, active, &expert, &range, &first)) return;
  gate_up_columns<T, kColumns>(
      w13 + expert * w13_expert_stride, first, intermediate, hidden, range.count,
      [&](int64_t r) { return a + (range.begin + r) * a_stride; },
      [&](int64_t r) { return h + (range.begin + r) * h_stride; }, activation);
}

template <class T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    stream_down(ExpertRows rows, const T* __restrict__ h, int64_t h_stride,
                const T* __restrict__ w2, int64_t w2_expert_stride, T* __restrict__ out,
                int64_t out_stride, int64_t hidden, int64_t intermediate) {
  wait_for_previous_kernel();
  extern __shared__ int active[];
  constexpr int kColumns = kDownColumns;
  int64_t expert = 0, first = 0;
  RowRange range;
  if (!warp_task<kColumns>(rows, hidden, active, &expert, &range, &first)) return;
  down_columns<T, kColumns, kRowsPerPass>(
      w2 + expert * w2_expert_stride, first, intermediate, range.count,
      [&](int64_t r) { return h + (range.begin + r) * h_stride; },
      [&](int64_t r, int c, float v) {
        out[(range.begin + r) * out_stride + first + c] = from_float<T>(v);
      });
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class T>
void launch(const ExpertRows& rows, const WeightStreamArgs& args, ExpertPhase phase,
            cudaStream_t stream) {
  // One grid row per expert that can own rows: never more than the rows themselves.
  const auto expert_slots = static_cast<unsigned>(std::min(rows.num_experts, rows.num_rows));
  const size_t list_bytes = static_cast<size_t>(rows.num_experts) * sizeof(int);
  constexpr int64_t kGateUpBlockColumns = kWarps * kGateUpColumns;
  constexpr int64_t kDownBlockColumns = kWarps * kDownColumns;
  const dim3 gate_up_grid(
      static_cast<unsigned>((args.intermediate + kGateUpBlockColumns - 1) / kGateUpBlockColumns),
      expert_slots);
  if (phase != ExpertPhase::down) {
    launch_overlapped(stream_gate_up<T>, gate_up_grid, dim3(kThreads), list_bytes, stream, rows,
                      static_cast<const T*>(args.a), args.a_stride, static_cast<const T*>(args.w13),
                      args.w13_expert_stride, static_cast<T*>(args.h), args.h_stride,
                      args.intermediate, args.hidden, args.activation);
    IRONMOE_CUDA_CHECK_LAUNCH(stream);
  }
  if (phase == ExpertPhase::gate_up) return;
  const dim3 down_grid(
      static_cast<unsigned>((args.hidden + kDownBlockColumns - 1) / kDownBlockColumns),
      expert_slots);
  launch_overlapped(stream_down<T>, down_grid, dim3(kThreads), list_bytes, stream, rows,
                    static_cast<const T*>(args.h), args.h_stride, static_cast<const T*>(args.w2),
                    args.w2_expert_stride, static_cast<T*>(args.out), args.out_stride, args.hidden,
                    args.intermediate);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

}  // namespace

bool weight_stream_supports(const WeightStreamArgs& args, int64_t local_experts) {
  const bool dtype = args.dtype == DType::bf16 || args.dtype == DType::f16;
  const bool shapes = args.hidden % kVec == 0 && args.intermediate % kVec == 0 &&
                      args.a_stride % kVec == 0 && args.h_stride % kVec == 0 &&
                      args.w13_expert_stride % kVec == 0 && args.w2_expert_stride % kVec == 0;
  const bool pointers =
      aligned16(args.a) && aligned16(args.h) && aligned16(args.w13) && aligned16(args.w2);
  return dtype && shapes && pointers && local_experts <= kWeightStreamMaxExperts;
}

void weight_stream_experts(const ExpertRows& rows, const WeightStreamArgs& args, ExpertPhase phase,
                           cudaStream_t stream) {
  if (rows.num_experts == 0 || rows.num_rows == 0) return;
  IRONMOE_CHECK(weight_stream_supports(args, rows.num_experts), "experts",
                "internal: weight-stream kernels called with unsupported operands");
  if (args.dtype == DType::bf16) {
    launch<__nv_bfloat16>(rows, args, phase, stream);
  } else {
    launch<__half>(rows, args, phase, stream);
  }
}

}  // namespace ironmoe::cuda::gemm
