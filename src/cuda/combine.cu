// Stage 5 on CUDA: out[t] = sum over j = 0..k-1, in that order, of w[t, j] * Y[slot_to_row[t*k+j]].
//
// fp32 accumulation starting from 0, each term rounded as a separate multiply and add
// (__fmul_rn / __fadd_rn, never contracted into an fma), so a row equals the CPU backend's bit for
// bit; the sum is rounded once to the storage dtype. Slots whose row is -1 (or not a row of Y)
// contribute nothing; rows t >= *num_valid_tokens (read on the device) are written as zeros.
// Accesses are 16 bytes wide when H's bytes, Y, out and out's row stride are multiples of 16,
// else one element wide. Grid: x = token, y = column tiles of kCombineThreads accesses.
#include <cstdint>

#include "core/check.h"
#include "core/plan_math.h"
#include "core/routing_rules.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/launch.cuh"
#include "cuda/storage.cuh"

namespace ironmoe::cuda {
namespace {

constexpr int kCombineThreads = 128;

struct CombineParams {
  const void* permuted_out;  // Y [R, H]
  int64_t rows;              // R
  const int32_t* slot_to_row;
  const float* topk_weights;
  int top_k;
  void* out;
  int64_t out_stride;  // elements
  int64_t tokens;
  int64_t hidden;
  const int32_t* num_valid_tokens;
};

// `Width` consecutive elements, moved as one access.
template <class T, int Width>
struct alignas(sizeof(T) * Width) Pack {
  T values[Width];
};

template <class T, int Width>
__global__ void __launch_bounds__(kCombineThreads) combine_rows_kernel(CombineParams p) {
  wait_for_previous_kernel();
  __shared__ int32_t slot_rows[core::kMaxTopK];
  __shared__ float slot_weights[core::kMaxTopK];
  const int64_t token = blockIdx.x;
  const int tid = static_cast<int>(threadIdx.x);
  if (tid < p.top_k) {
    const int32_t row = p.slot_to_row[token * p.top_k + tid];
    slot_rows[tid] = row >= 0 && row < p.rows ? row : core::kNoRow;
    slot_weights[tid] = p.topk_weights[token * p.top_k + tid];
  }
  __syncthreads();

  const int64_t column = (static_cast<int64_t>(blockIdx.y) * kCombineThreads + tid) * Width;
  if (column >= p.hidden) return;
  float acc[Width];
  for (int i = 0; i < Width; ++i) acc[i] = 0.0f;
  if (token < core::valid_tokens(p.tokens, p.num_valid_tokens)) {
    for (int j = 0; j < p.top_k; ++j) {
      const int32_t row = slot_rows[j];
      if (row == core::kNoRow) continue;
      const float weight = slot_weights[j];
      const auto* y = static_cast<const T*>(p.permuted_out) + row * p.hidden + column;
      const Pack<T, Width> pack = *reinterpret_cast<const Pack<T, Width>*>(y);
      for (int i = 0; i < Width; ++i)
        acc[i] = __fadd_rn(acc[i], __fmul_rn(weight, to_float(pack.values[i])));
    }
  }
  Pack<T, Width> result;
  for (int i = 0; i < Width; ++i) result.values[i] = from_float<T>(acc[i]);
  *reinterpret_cast<Pack<T, Width>*>(static_cast<T*>(p.out) + token * p.out_stride + column) =
      result;
}

template <class T, int Width>
void launch_combine(const CombineParams& p, cudaStream_t stream) {
  const int64_t accesses = p.hidden / Width;
  const dim3 grid(static_cast<unsigned>(p.tokens),
                  static_cast<unsigned>((accesses + kCombineThreads - 1) / kCombineThreads));
  launch_overlapped(combine_rows_kernel<T, Width>, grid, dim3(kCombineThreads), 0, stream, p);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

}  // namespace

void combine(const CombineArgs& args, void* stream) {
  const char* where = "combine";
  CombineParams p{};
  p.permuted_out = args.permuted_out.data;
  p.rows = args.permuted_out.size(0);
  p.slot_to_row = args.slot_to_row.ptr<const int32_t>();
  p.topk_weights = args.topk_weights.ptr<const float>();
  p.top_k = static_cast<int>(args.slot_to_row.size(1));
  p.out = args.out.data;
  p.out_stride = args.out.strides[0];
  p.tokens = args.slot_to_row.size(0);
  p.hidden = args.permuted_out.size(1);
  p.num_valid_tokens = args.num_valid_tokens;
  if (p.tokens == 0) return;
  IRONMOE_CHECK((p.hidden + kCombineThreads - 1) / kCombineThreads <= 65535, where,
                "permuted_out: expected at most ", 65535 * kCombineThreads, " columns, got ",
                p.hidden);

  const auto element_bytes = static_cast<int64_t>(dtype_size(args.out.dtype));
  const int64_t row_bytes = p.hidden * element_bytes;
  const bool vectorised =
      rows_allow_wide_access(p.permuted_out, row_bytes, row_bytes, p.rows) &&
      rows_allow_wide_access(p.out, row_bytes, p.out_stride * element_bytes, p.tokens);
  const cudaStream_t cuda_stream = as_cuda_stream(stream);
  dispatch_float_dtype(where, args.out.dtype, [&](auto element) {
    using T = decltype(element);
    constexpr int kWide = static_cast<int>(kWideAccessBytes / sizeof(T));
    if (vectorised) {
      launch_combine<T, kWide>(p, cuda_stream);
    } else {
      launch_combine<T, 1>(p, cuda_stream);
    }
  });
}

}  // namespace ironmoe::cuda
