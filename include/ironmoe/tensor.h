#pragma once
// A non-owning view of a strided tensor: data pointer, dtype, shape, strides (in elements), device.
// ironmoe never allocates or frees what a view points to.
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "ironmoe/types.h"

namespace ironmoe {

inline constexpr int kMaxDims = 4;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::f32;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> strides{};  // in elements, not bytes
  Device device = Device::cpu();

  // A row-major contiguous view.
  static TensorView contiguous(const void* data, DType dtype, std::initializer_list<int64_t> shape,
                               Device device = Device::cpu());
  // Same, with an explicit stride for dimension 0 (rows of a 2-D tensor that live inside a wider
  // buffer, as engines pass slices).
  static TensorView rows(const void* data, DType dtype, int64_t num_rows, int64_t row_size,
                         int64_t row_stride, Device device = Device::cpu());

  bool defined() const { return data != nullptr; }
  int64_t numel() const;
  int64_t size(int dim) const { return shape[dim]; }
  bool is_contiguous() const;
  std::string shape_string() const;  // "[4, 64]"

  template <class T>
  T* ptr() const {
    return static_cast<T*>(data);
  }
};

// Validation helpers. Each throws ironmoe::Error naming `where` (the entry point) and `name` (the
// argument) with what was expected and what was given.
//
// `expected_shape` entries of -1 accept any size. For 2-D tensors `rows_may_stride` allows a row
// stride larger than the row (the last dimension must still have stride 1); otherwise the tensor
// must be contiguous.
struct TensorSpec {
  DType dtype;
  std::initializer_list<int64_t> shape;
  bool rows_may_stride = false;
};

void check_tensor(const char* where, const char* name, const TensorView& tensor,
                  const TensorSpec& spec, Device device);
void check_tensor_dtype_in(const char* where, const char* name, const TensorView& tensor,
                           std::initializer_list<DType> allowed);
void check_pointer_alignment(const char* where, const char* name, const void* pointer,
                             size_t alignment);

}  // namespace ironmoe
