// TensorView helpers, the shared argument checks of tensor.h and the names of types.h.
#include "ironmoe/tensor.h"

#include <cstdint>
#include <sstream>

#include "api/validate.h"
#include "core/check.h"

namespace ironmoe {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f32: return 4;
    case DType::bf16: return 2;
    case DType::f16: return 2;
    case DType::i32: return 4;
    case DType::f8e4m3: return 1;
  }
  core::fail("dtype_size", "unknown dtype ", static_cast<int>(dtype));
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i32: return "i32";
    case DType::f8e4m3: return "f8e4m3";
  }
  return "unknown-dtype";
}

const char* device_name(DeviceType type) {
  switch (type) {
    case DeviceType::cpu: return "cpu";
    case DeviceType::cuda: return "cuda";
  }
  return "unknown-device";
}

namespace {

// "[4, 64]"; with any_for_negative, the -1 entries of an expected shape print as "*" (any size).
std::string shape_text(const int64_t* dims, size_t count, bool any_for_negative = false) {
  std::ostringstream text;
  text << '[';
  for (size_t i = 0; i < count; ++i) {
    if (i > 0) text << ", ";
    if (any_for_negative && dims[i] < 0) {
      text << '*';
    } else {
      text << dims[i];
    }
  }
  text << ']';
  return text.str();
}

// *product = a * b, or false when that does not fit in int64 (a, b >= 0).
bool multiply(int64_t a, int64_t b, int64_t* product) {
  return !__builtin_mul_overflow(a, b, product);
}

// Whether ndim indexes only the shape and stride arrays.
bool ndim_in_range(int ndim) { return ndim >= 0 && ndim <= kMaxDims; }

// How many bytes the view's elements span from its first one (strides as given, sizes >= 0, at
// least one element), or false when a hostile shape or stride would overflow int64 on the way:
// the backends multiply these out as pointer offsets.
bool span_bytes(const TensorView& t, int64_t* bytes) {
  int64_t last = 0;  // offset of the last element, in elements
  for (int d = 0; d < t.ndim; ++d) {
    if (t.strides[d] == INT64_MIN) return false;
    int64_t step = 0;
    if (!multiply(t.shape[d] - 1, t.strides[d] < 0 ? -t.strides[d] : t.strides[d], &step) ||
        __builtin_add_overflow(last, step, &last)) {
      return false;
    }
  }
  int64_t elements = 0;
  return !__builtin_add_overflow(last, int64_t{1}, &elements) &&
         multiply(elements, static_cast<int64_t>(dtype_size(t.dtype)), bytes);
}

}  // namespace

TensorView TensorView::contiguous(const void* data, DType dtype,
                                  std::initializer_list<int64_t> shape, Device device) {
  IRONMOE_CHECK(shape.size() <= static_cast<size_t>(kMaxDims), "TensorView::contiguous",
                "expected at most ", kMaxDims, " dimensions, got ", shape.size());
  TensorView view;
  view.data = const_cast<void*>(data);
  view.dtype = dtype;
  view.ndim = static_cast<int>(shape.size());
  view.device = device;
  int dim = 0;
  for (int64_t size : shape) {
    IRONMOE_CHECK(size >= 0, "TensorView::contiguous", "dimension ", dim,
                  ": expected a size >= 0, got ", size);
    view.shape[dim++] = size;
  }
  int64_t stride = 1;
  for (int d = view.ndim - 1; d >= 0; --d) {
    view.strides[d] = stride;
    IRONMOE_CHECK(view.shape[d] == 0 || multiply(stride, view.shape[d], &stride),
                  "TensorView::contiguous", "shape ", view.shape_string(),
                  ": more elements than int64 can count");
  }
  return view;
}

TensorView TensorView::rows(const void* data, DType dtype, int64_t num_rows, int64_t row_size,
                            int64_t row_stride, Device device) {
  IRONMOE_CHECK(num_rows >= 0 && row_size >= 0, "TensorView::rows",
                "expected sizes >= 0, got [", num_rows, ", ", row_size, "]");
  IRONMOE_CHECK(row_stride >= row_size, "TensorView::rows", "row_stride: expected >= row_size (",
                row_size, "), got ", row_stride);
  TensorView view;
  view.data = const_cast<void*>(data);
  view.dtype = dtype;
  view.ndim = 2;
  view.shape[0] = num_rows;
  view.shape[1] = row_size;
  view.strides[0] = row_stride;
  view.strides[1] = 1;
  view.device = device;
  return view;
}

// Saturates at INT64_MAX for shapes whose product overflows, and for an ndim outside
// [0, kMaxDims] (validation refuses those), so that a hostile view never makes this overflow or
// read past its shape array.
int64_t TensorView::numel() const {
  if (!ndim_in_range(ndim)) return INT64_MAX;
  for (int d = 0; d < ndim; ++d) {
    if (shape[d] == 0) return 0;
  }
  int64_t count = 1;
  for (int d = 0; d < ndim; ++d) {
    if (shape[d] < 0 || !multiply(count, shape[d], &count)) return INT64_MAX;
  }
  return count;
}

// Strides of dimensions of size 1 are irrelevant, and an empty tensor is trivially contiguous.
// A view with an ndim outside [0, kMaxDims] is not.
bool TensorView::is_contiguous() const {
  if (!ndim_in_range(ndim)) return false;
  if (numel() == 0) return true;
  int64_t expected = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    if (shape[d] != 1 && strides[d] != expected) return false;
    if (!multiply(expected, shape[d], &expected)) return false;  // spans more than int64
  }
  return true;
}

std::string TensorView::shape_string() const {
  const int count = ndim < 0 ? 0 : (ndim > kMaxDims ? kMaxDims : ndim);
  return shape_text(shape.data(), static_cast<size_t>(count));
}

void check_tensor(const char* where, const char* name, const TensorView& tensor,
                  const TensorSpec& spec, Device device) {
  IRONMOE_CHECK(tensor.ndim >= 0 && tensor.ndim <= kMaxDims, where, name,
                ": expected 0 to ", kMaxDims, " dimensions, got ", tensor.ndim);
  bool shape_ok = static_cast<size_t>(tensor.ndim) == spec.shape.size();
  for (int d = 0; shape_ok && d < tensor.ndim; ++d) {
    const int64_t want = spec.shape.begin()[d];
    shape_ok = tensor.shape[d] >= 0 && (want < 0 || tensor.shape[d] == want);
  }
  IRONMOE_CHECK(shape_ok, where, name, ": expected shape ",
                shape_text(spec.shape.begin(), spec.shape.size(), true), ", got ",
                tensor.shape_string());
  IRONMOE_CHECK(tensor.dtype == spec.dtype, where, name, ": expected dtype ",
                dtype_name(spec.dtype), ", got ", dtype_name(tensor.dtype));
  IRONMOE_CHECK(tensor.device == device, where, name, ": expected a tensor on ",
                api::device_string(device), ", got one on ", api::device_string(tensor.device));
  // Backends turn a row stride into bytes whatever the row count (a single row's stride is never
  // used to step, but it is still multiplied), so every stride must count bytes in int64.
  const auto element = static_cast<int64_t>(dtype_size(tensor.dtype));
  for (int d = 0; d < tensor.ndim; ++d) {
    const int64_t stride = tensor.strides[d];
    IRONMOE_CHECK(stride >= -(INT64_MAX / element) && stride <= INT64_MAX / element, where, name,
                  ": stride ", stride, " of dimension ", d, " is more bytes than int64 can count");
  }
  if (tensor.numel() == 0) return;  // nothing is read or written: any pointer will do
  IRONMOE_CHECK(tensor.data != nullptr, where, name, ": expected data for shape ",
                tensor.shape_string(), ", got a null pointer");
  int64_t bytes = 0;
  IRONMOE_CHECK(span_bytes(tensor, &bytes), where, name, ": shape ", tensor.shape_string(),
                " with strides ",
                shape_text(tensor.strides.data(), static_cast<size_t>(tensor.ndim)),
                " spans more bytes than int64 can count");
  check_pointer_alignment(where, name, tensor.data, dtype_size(tensor.dtype));
  if (spec.rows_may_stride && tensor.ndim == 2) {
    const bool row_ok = tensor.shape[1] <= 1 || tensor.strides[1] == 1;
    const bool stride_ok = tensor.shape[0] <= 1 || tensor.strides[0] >= tensor.shape[1];
    IRONMOE_CHECK(row_ok && stride_ok, where, name,
                  ": expected contiguous rows (strides [>= ", tensor.shape[1], ", 1]), got [",
                  tensor.strides[0], ", ", tensor.strides[1], "]");
    return;
  }
  IRONMOE_CHECK(tensor.is_contiguous(), where, name, ": expected a contiguous tensor, got strides ",
                shape_text(tensor.strides.data(), static_cast<size_t>(tensor.ndim)), " for shape ",
                tensor.shape_string());
}

namespace api {

ByteRange byte_range(const char* name, const TensorView& view) {
  const auto begin = reinterpret_cast<uintptr_t>(view.data);
  int64_t bytes = 0;
  if (view.data == nullptr || view.numel() == 0 || !span_bytes(view, &bytes)) {
    return {name, begin, begin};
  }
  return {name, begin, begin + static_cast<uintptr_t>(bytes)};
}

void check_disjoint(const char* where, const ByteRange& written,
                    std::initializer_list<ByteRange> others) {
  if (written.end == written.begin) return;
  for (const ByteRange& other : others) {
    const bool overlap =
        other.end != other.begin && written.begin < other.end && other.begin < written.end;
    IRONMOE_CHECK(!overlap, where, written.name, ": overlaps ", other.name, " (bytes [",
                  reinterpret_cast<const void*>(written.begin), ", ",
                  reinterpret_cast<const void*>(written.end), ") and [",
                  reinterpret_cast<const void*>(other.begin), ", ",
                  reinterpret_cast<const void*>(other.end),
                  ")); a buffer the call writes must not share memory with another argument");
  }
}

void check_outputs_apart(const char* where, std::initializer_list<ByteRange> outputs,
                         std::initializer_list<ByteRange> inputs) {
  for (auto written = outputs.begin(); written != outputs.end(); ++written) {
    check_disjoint(where, *written, inputs);
    for (auto other = written + 1; other != outputs.end(); ++other) {
      check_disjoint(where, *written, {*other});
    }
  }
}

}  // namespace api

void check_tensor_dtype_in(const char* where, const char* name, const TensorView& tensor,
                           std::initializer_list<DType> allowed) {
  for (DType dtype : allowed) {
    if (tensor.dtype == dtype) return;
  }
  std::ostringstream names;
  bool first = true;
  for (DType dtype : allowed) {
    names << (first ? "" : " or ") << dtype_name(dtype);
    first = false;
  }
  core::fail(where, name, ": expected dtype ", names.str(), ", got ", dtype_name(tensor.dtype));
}

void check_pointer_alignment(const char* where, const char* name, const void* pointer,
                             size_t alignment) {
  const auto address = reinterpret_cast<uintptr_t>(pointer);
  IRONMOE_CHECK(alignment == 0 || address % alignment == 0, where, name, ": expected a pointer ",
                "aligned to ", alignment, " bytes, got ", pointer);
}

}  // namespace ironmoe
