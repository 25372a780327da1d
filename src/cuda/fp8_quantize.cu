// FP8 activation quantisation on CUDA (fp8_quantize.h): a block per row in 16-byte chunks where
// the row allows (fp8_quantize_vector.cuh), else a warp per row. A per-tensor scale takes
// two kernels after zeroing its word: an atomicMax of each warp's largest magnitude (a
// non-negative float orders as its bits, so integer max is float max; NaN is skipped), then one
// thread turning the amax into the scale in place. Row and block scales are found by the warp
// that quantises the row, so they never leave it.
#include <algorithm>
#include <type_traits>

#include "core/fp8_scales.h"
#include "core/plan_math.h"
#include "cuda/cuda_check.h"
#include "cuda/fp8.cuh"
#include "cuda/fp8_quantize.h"
#include "cuda/fp8_quantize_vector.cuh"
#include "cuda/fp8_row_sources.cuh"
#include "cuda/gemm/expert_rows.cuh"
#include "cuda/storage.cuh"

namespace ironmoe::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// Largest magnitude of row r's columns [0, k) over the warp, NaN skipped (fmaxf drops NaN).
template <class Rows>
__device__ float row_amax_skipping_nan(const Rows& values, int64_t expert, int64_t r, int64_t k,
                                       int lane) {
  float amax = 0.0f;
  for (int64_t c = lane; c < k; c += 32) amax = fmaxf(amax, fabsf(values(expert, r, c)));
  return warp_max(amax);
}

__device__ void add_amax(unsigned* word, float amax) {
  atomicMax(word, __float_as_uint(amax));  // amax >= 0 and never NaN here
}

// Grid (local expert, row split): warp w of split s takes the expert's rows s * kWarps + w,
// stepping by splits * kWarps; body(expert, range, row).
template <class Body>
__device__ void for_expert_rows(const gemm::ExpertRows& rows, Body body) {
  const int64_t expert = blockIdx.x;
  const gemm::RowRange range = gemm::expert_row_range(rows, expert);
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int64_t step = static_cast<int64_t>(gridDim.y) * kWarps;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kWarps + warp; r < range.count; r += step)
    body(expert, range, range.begin + r);
}

template <class Rows>
__global__ void __launch_bounds__(kThreads)
    amax_of_expert_rows(gemm::ExpertRows rows, Rows values, int64_t k, unsigned* word) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  float amax = 0.0f;
  for_expert_rows(rows, [&](int64_t expert, gemm::RowRange, int64_t r) {
    amax = fmaxf(amax, row_amax_skipping_nan(values, expert, r, k, lane));
  });
  if (lane == 0) add_amax(word, amax);
}

__global__ void amax_to_scale(unsigned* word) {
  *reinterpret_cast<float*>(word) = fp8_dynamic_scale(__uint_as_float(*word));
}

// Encodes row r's columns [first, first + count) with the group's scale: the given one
// (fp8_tensor) or the group's own, NaN when the group holds a NaN; returns the scale.
template <class Rows>
__device__ float quantize_group(const Rows& values, int64_t expert, int64_t r, uint8_t* codes,
                                int64_t first, int64_t count, const float* tensor_scale, int lane) {
  float scale = 0.0f;
  if (tensor_scale != nullptr) {
    scale = *tensor_scale;
  } else {
    float amax = 0.0f;
    bool nan = false;
    for (int64_t c = first + lane; c < first + count; c += 32) {
      const float v = values(expert, r, c);
      nan = nan || isnan(v);
      amax = fmaxf(amax, fabsf(v));
    }
    amax = warp_max(amax);
    scale = fp8_dynamic_scale(__any_sync(kFullMask, nan) ? __int_as_float(0x7fc00000) : amax);
  }
  for (int64_t c = first + lane; c < first + count; c += 32) {
    codes[c] = fp8_quantize(values(expert, r, c), scale);
  }
  return scale;
}

template <class Rows>
__global__ void __launch_bounds__(kThreads)
    quantize_expert_rows(gemm::ExpertRows rows, Rows values, int64_t k, QuantScheme quant,
                         const float* tensor_scale, uint8_t* codes, ScaleSink sink) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t group = quant == QuantScheme::fp8_block ? core::kFp8Block : k;
  for_expert_rows(rows, [&](int64_t expert, gemm::RowRange range, int64_t r) {
    uint8_t* row_codes = codes + r * k;
    for (int64_t first = 0, g = 0; first < k; first += group, ++g) {
      const int64_t count = min(group, k - first);
      const float scale =
          quantize_group(values, expert, r, row_codes, first, count,
                         quant == QuantScheme::fp8_tensor ? tensor_scale : nullptr, lane);
      sink.put(expert, range, r, g, first, count, scale, lane);
    }
  });
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    amax_of_tokens(const T* x, int64_t stride, int64_t tokens, int64_t hidden,
                   const int32_t* num_valid_tokens, unsigned* word) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t valid = core::valid_tokens(tokens, num_valid_tokens);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  float amax = 0.0f;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5); t < valid;
       t += warps) {
    amax = fmaxf(amax, row_amax_skipping_nan(PlainRows<T>{x, stride}, 0, t, hidden, lane));
  }
  if (lane == 0) add_amax(word, amax);
}

dim3 expert_rows_grid(const gemm::ExpertRows& rows) {
  const int64_t average = rows.num_rows / std::max<int64_t>(rows.num_experts, 1);
  const int64_t splits = std::clamp<int64_t>((average + kWarps - 1) / kWarps, 1, 1024);
  IRONMOE_CHECK(rows.num_experts <= 0x7fffffff, "experts", "too many local experts for a grid");
  return dim3(static_cast<unsigned>(rows.num_experts), static_cast<unsigned>(splits));
}

// Calls body(rows) with the device reader of the source.
template <class Body>
void dispatch_source(const Fp8RowSource& source, Body&& body) {
  dispatch_float_dtype("experts", source.dtype, [&](auto element) {
    using T = decltype(element);
    if (source.gated) {
      body(GatedRows<T>{static_cast<const T*>(source.data), source.stride, source.k,
                        source.activation, source.channel_scales});
    } else if (source.row_to_slot != nullptr) {
      body(GatheredRows<T>{static_cast<const T*>(source.data), source.stride, source.row_to_slot,
                           source.top_k, source.slots});
    } else {
      body(PlainRows<T>{static_cast<const T*>(source.data), source.stride});
    }
  });
}

// The vectorised kernels' launch: (local expert, row split) blocks of `threads` threads with
// `chunks_per_thread` chunks each; none when the source does not allow 16-byte reads.
struct VectorLaunch {
  bool ok = false;
  int chunks_per_thread = 0;
  int threads = 0;
  dim3 grid;
};

VectorLaunch vector_launch(const gemm::ExpertRows& rows, const Fp8RowSource& source,
                           int64_t rows_per_block) {
  VectorLaunch launch;
  const int64_t element = source.dtype == DType::f32 ? 4 : 2;
  const int64_t chunks = source.k / kFp8Chunk;
  const bool aligned =
      reinterpret_cast<uintptr_t>(source.data) % 16 == 0 && source.stride * element % 16 == 0;
  if (!aligned || source.k % kFp8Chunk != 0 ||
      chunks > int64_t{fp8_vector::kMaxThreads} * fp8_vector::kMaxChunks) {
    return launch;
  }
  launch.ok = true;
  launch.chunks_per_thread = chunks <= fp8_vector::kMaxThreads       ? 1
                             : chunks <= 2 * fp8_vector::kMaxThreads ? 2
                                                                     : 4;
  const int64_t per_thread = (chunks + launch.chunks_per_thread - 1) / launch.chunks_per_thread;
  launch.threads = static_cast<int>(std::max<int64_t>(32, (per_thread + 31) / 32 * 32));
  const int64_t average = rows.num_rows / std::max<int64_t>(rows.num_experts, 1);
  const int64_t splits =
      std::clamp<int64_t>((average + rows_per_block - 1) / rows_per_block, 1, 65535);
  IRONMOE_CHECK(rows.num_experts <= 0x7fffffff, "experts", "too many local experts for a grid");
  launch.grid = dim3(static_cast<unsigned>(rows.num_experts), static_cast<unsigned>(splits));
  return launch;
}

// Calls body(std::integral_constant<int, chunks per thread>).
template <class Body>
void dispatch_chunks(int chunks_per_thread, Body&& body) {
  switch (chunks_per_thread) {
    case 1: body(std::integral_constant<int, 1>{}); return;
    case 2: body(std::integral_constant<int, 2>{}); return;
    default: body(std::integral_constant<int, fp8_vector::kMaxChunks>{}); return;
  }
}

}  // namespace

void fp8_tensor_scale_of_rows(const gemm::ExpertRows& rows, const Fp8RowSource& source,
                              float* scale, cudaStream_t stream) {
  auto* word = reinterpret_cast<unsigned*>(scale);
  IRONMOE_CUDA_CHECK(cudaMemsetAsync(word, 0, sizeof(unsigned), stream));
  if (rows.num_experts > 0 && rows.num_rows > 0) {
    // Eight rows per block: few enough blocks that their atomics on one word stay cheap.
    const VectorLaunch vector = vector_launch(rows, source, 8);
    dispatch_source(source, [&](auto values) {
      if (!vector.ok) {
        amax_of_expert_rows<<<expert_rows_grid(rows), kThreads, 0, stream>>>(rows, values, source.k,
                                                                             word);
        return;
      }
      dispatch_chunks(vector.chunks_per_thread, [&](auto chunks) {
        fp8_vector::amax_of_rows<decltype(values), chunks()>
            <<<vector.grid, vector.threads, 0, stream>>>(rows, values, source.k, word);
      });
    });
    IRONMOE_CUDA_CHECK_LAUNCH(stream);
  }
  amax_to_scale<<<1, 1, 0, stream>>>(word);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

void fp8_quantize_rows(const gemm::ExpertRows& rows, const Fp8RowSource& source, QuantScheme quant,
                       const float* tensor_scale, uint8_t* codes, const Fp8ScaleTarget& scales,
                       cudaStream_t stream) {
  if (rows.num_experts == 0 || rows.num_rows == 0) return;
  const ScaleSink sink{scales.row_scales, core::fp8_activation_scales_per_row(quant, source.k),
                       scales.grouped, scales.grouped_factor, core::fp8_blocks(source.k)};
  const VectorLaunch vector = vector_launch(rows, source, 2);
  dispatch_source(source, [&](auto values) {
    if (!vector.ok) {
      quantize_expert_rows<<<expert_rows_grid(rows), kThreads, 0, stream>>>(
          rows, values, source.k, quant, tensor_scale, codes, sink);
      return;
    }
    dispatch_chunks(vector.chunks_per_thread, [&](auto chunks) {
      fp8_vector::quantize_rows<decltype(values), chunks()>
          <<<vector.grid, vector.threads, 0, stream>>>(rows, values, source.k, quant, tensor_scale,
                                                       codes, sink);
    });
  });
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

void fp8_tensor_scale_of_tokens(const void* x, DType dtype, int64_t stride, int64_t tokens,
                                int64_t hidden, const int32_t* num_valid_tokens, float* scale,
                                cudaStream_t stream) {
  auto* word = reinterpret_cast<unsigned*>(scale);
  IRONMOE_CUDA_CHECK(cudaMemsetAsync(word, 0, sizeof(unsigned), stream));
  if (tokens > 0) {
    const auto blocks =
        static_cast<unsigned>(std::min<int64_t>((tokens + kWarps - 1) / kWarps, 1024));
    dispatch_float_dtype("fp8_input_scale", dtype, [&](auto element) {
      using T = decltype(element);
      amax_of_tokens<T><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(x), stride, tokens,
                                                         hidden, num_valid_tokens, word);
    });
    IRONMOE_CUDA_CHECK_LAUNCH(stream);
  }
  amax_to_scale<<<1, 1, 0, stream>>>(word);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

}  // namespace ironmoe::cuda
