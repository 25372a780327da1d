#pragma once
// The device-side problem list of the Hopper FP8 grouped GEMM, shared by the list writer
// (grouped_gemm_sm90_fp8.cu) and the two GEMM instantiations (grouped_gemm_sm90_fp8_gemm.cuh):
// per-group shapes, pointers and strides, each array 16-byte aligned. The scale layouts are not
// stored: the kernel derives each group's from its shape. few_rows lists (sm90_shape.h) hold the
// weights as A and the rows as B, each with its scales.
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "cute/tensor.hpp"
#include "cutlass/float8.h"

namespace ironmoe::cuda::gemm::sm90_fp8 {

using ElementAB = cutlass::float_e4m3_t;
using Shape = cute::Shape<int, int, int>;                  // (M, N, K) of one group
using Stride = cute::Stride<int64_t, cute::_1, cute::_0>;  // row-major A and D, K-major B
// few_rows (sm90_shape.h): D is the column-major N x rows view of the row-major [R, N] output.
using ColumnStride = cute::Stride<cute::_1, int64_t, cute::_0>;

struct ListArrays {
  Shape* shapes = nullptr;
  const ElementAB** a_pointers = nullptr;
  const ElementAB** b_pointers = nullptr;
  void** d_pointers = nullptr;  // bf16 or f32, per instantiation
  const float** a_scale_pointers = nullptr;
  const float** b_scale_pointers = nullptr;
  Stride* a_strides = nullptr;
  Stride* b_strides = nullptr;
  Stride* d_strides = nullptr;               // wide
  ColumnStride* d_column_strides = nullptr;  // few_rows
};

// Lays the arrays out from `base` (null: only measures); returns the bytes used.
inline size_t carve_list(char* base, int64_t num_experts, ListArrays* arrays) {
  const auto count = static_cast<size_t>(num_experts);
  size_t end = 0;
  auto take = [&](auto*& pointer, size_t element_bytes) {
    using Pointer = std::remove_reference_t<decltype(pointer)>;
    pointer = base == nullptr ? nullptr : reinterpret_cast<Pointer>(base + end);
    end = (end + count * element_bytes + 15) / 16 * 16;
  };
  ListArrays a;
  take(a.shapes, sizeof(Shape));
  take(a.a_pointers, sizeof(void*));
  take(a.b_pointers, sizeof(void*));
  take(a.d_pointers, sizeof(void*));
  take(a.a_scale_pointers, sizeof(void*));
  take(a.b_scale_pointers, sizeof(void*));
  take(a.a_strides, sizeof(Stride));
  take(a.b_strides, sizeof(Stride));
  take(a.d_strides, sizeof(Stride));
  take(a.d_column_strides, sizeof(ColumnStride));
  if (arrays != nullptr) *arrays = a;
  return end;
}

inline ListArrays list_arrays(void* list, int64_t num_experts) {
  ListArrays arrays;
  carve_list(static_cast<char*>(list), num_experts, &arrays);
  return arrays;
}

}  // namespace ironmoe::cuda::gemm::sm90_fp8
