// The SiLU/GELU-and-mul step between the two Hopper GEMMs: one thread per group of columns,
// blocks laid out as (expert, row split) x column chunk; 16-byte accesses when the shapes allow.
#include <algorithm>

#include "cuda/cuda_check.h"
#include "cuda/gemm/expert_rows.cuh"
#include "cuda/gemm/gated_activation.cuh"
#include "cuda/gemm/gated_activation.h"
#include "cuda/storage.cuh"

namespace ironmoe::cuda::gemm {
namespace {

constexpr int kThreads = 256;

// Vec elements per thread: 16 bytes when every row start is 16-byte aligned, else 1.
template <class T, int Vec>
__global__ void __launch_bounds__(kThreads)
    gated_activation_rows(ExpertRows rows, const T* __restrict__ gate_up, int64_t gate_up_stride,
                          T* __restrict__ out, int64_t out_stride, int64_t intermediate,
                          int row_splits, Activation activation) {
  const int64_t expert = blockIdx.x / row_splits;
  const int split = static_cast<int>(blockIdx.x % row_splits);
  const int64_t column = (static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x) * Vec;
  if (column >= intermediate) return;
  const RowRange range = expert_row_range(rows, expert);
  for (int64_t row = range.begin + split; row < range.begin + range.count; row += row_splits) {
    const T* gate = gate_up + row * gate_up_stride + column;
    const T* up = gate + intermediate;
    T* h = out + row * out_stride + column;
    if constexpr (Vec == 1) {
      h[0] = from_float<T>(gated_activation(to_float(gate[0]), to_float(up[0]), activation));
    } else {
      alignas(16) T gates[Vec];
      alignas(16) T ups[Vec];
      alignas(16) T result[Vec];
      *reinterpret_cast<uint4*>(gates) = *reinterpret_cast<const uint4*>(gate);
      *reinterpret_cast<uint4*>(ups) = *reinterpret_cast<const uint4*>(up);
#pragma unroll
      for (int i = 0; i < Vec; ++i) {
        result[i] =
            from_float<T>(gated_activation(to_float(gates[i]), to_float(ups[i]), activation));
      }
      *reinterpret_cast<uint4*>(h) = *reinterpret_cast<const uint4*>(result);
    }
  }
}

template <class T, int Vec>
void launch(const ExpertRows& rows, const GatedActivationArgs& args, cudaStream_t stream) {
  // About four rows per block on average: enough blocks for large R, few idle ones for small R.
  const int64_t average_rows = rows.num_rows / std::max<int64_t>(rows.num_experts, 1);
  const int64_t row_splits = std::clamp<int64_t>((average_rows + 3) / 4, 1, 4096);
  const int64_t column_blocks = (args.intermediate + kThreads * Vec - 1) / (kThreads * Vec);
  IRONMOE_CHECK(rows.num_experts * row_splits <= 0x7fffffff && column_blocks <= 65535, "experts",
                "intermediate: ", args.intermediate,
                " columns or the number of experts exceed the launch limits of the CUDA backend");
  const dim3 grid(static_cast<unsigned>(rows.num_experts * row_splits),
                  static_cast<unsigned>(column_blocks));
  gated_activation_rows<T, Vec><<<grid, kThreads, 0, stream>>>(
      rows, static_cast<const T*>(args.gate_up), args.gate_up_stride, static_cast<T*>(args.out),
      args.out_stride, args.intermediate, static_cast<int>(row_splits), args.activation);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

}  // namespace

void gated_activation(const ExpertRows& rows, const GatedActivationArgs& args,
                      cudaStream_t stream) {
  if (rows.num_experts == 0 || rows.num_rows == 0) return;
  dispatch_float_dtype("experts", args.dtype, [&](auto element) {
    using T = decltype(element);
    constexpr int kVec = 16 / sizeof(T);
    const bool vectorizable = args.intermediate % kVec == 0 && args.gate_up_stride % kVec == 0 &&
                              args.out_stride % kVec == 0 && aligned16(args.gate_up) &&
                              aligned16(args.out);
    if (vectorizable) {
      launch<T, kVec>(rows, args, stream);
    } else {
      launch<T, 1>(rows, args, stream);
    }
  });
}

}  // namespace ironmoe::cuda::gemm
