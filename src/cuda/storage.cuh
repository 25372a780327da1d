#pragma once
// Storage dtypes on the device: the element type of each ironmoe::DType, its exact widening to
// fp32 and its one rounding back (round to nearest even), a host-side dispatch from the runtime
// DType to a kernel template, and when rows of storage may be moved 16 bytes at a time.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>

#include "core/check.h"
#include "ironmoe/types.h"

namespace ironmoe::cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}

// Calls body(T{}) with T the element type of a floating-point storage dtype.
template <class Body>
void dispatch_float_dtype(const char* where, DType dtype, Body&& body) {
  switch (dtype) {
    case DType::f32: body(float{}); return;
    case DType::bf16: body(__nv_bfloat16{}); return;
    case DType::f16: body(__half{}); return;
    case DType::i32: break;
    case DType::f8e4m3: break;
  }
  core::fail(where, "expected a floating-point dtype (f32, bf16, f16), got ", dtype_name(dtype));
}

inline constexpr size_t kWideAccessBytes = 16;

// Whether `rows` rows of `row_bytes` bytes, the first at `data` and each `stride_bytes` after the
// previous, can be read or written in 16-byte accesses: start, length and stride all multiples of
// 16 (a single row's stride does not matter).
inline bool rows_allow_wide_access(const void* data, int64_t row_bytes, int64_t stride_bytes,
                                   int64_t rows) {
  const auto wide = static_cast<int64_t>(kWideAccessBytes);
  return reinterpret_cast<uintptr_t>(data) % kWideAccessBytes == 0 && row_bytes % wide == 0 &&
         (rows <= 1 || stride_bytes % wide == 0);
}

}  // namespace ironmoe::cuda
