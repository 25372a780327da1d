#pragma once
// Host-side checks shared by the public entry points (src/api). Each throws ironmoe::Error naming
// the entry point, the argument, what was expected and what was given.
#include <cstddef>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>

#include "core/check.h"
#include "core/routing_rules.h"
#include "ironmoe/config.h"
#include "ironmoe/stream.h"
#include "ironmoe/tensor.h"

namespace ironmoe::api {

// Index maps (ids, slots, rows) are int32, so every count of slots or rows must fit one.
inline constexpr int64_t kMaxIndex = std::numeric_limits<int32_t>::max();
// hidden and intermediate at most 2^20 (the largest models use a few ten thousand): with rows up
// to kMaxIndex, every buffer size (rows x dimension x 4 bytes <= 2^53) and their sum fit int64
// and size_t with room to spare, so no size computed from a config can wrap.
inline constexpr int64_t kMaxDimension = int64_t{1} << 20;

// "cpu" or "cuda:1".
inline std::string device_string(Device device) {
  std::ostringstream text;
  text << device_name(device.type);
  if (device.is_cuda()) text << ':' << device.index;
  return text.str();
}

// An argument counts as given when it has data or a shape: an empty tensor (T = 0) may come
// with a null pointer, a default-constructed view is "absent".
inline bool present(const TensorView& tensor) { return tensor.data != nullptr || tensor.ndim > 0; }

// The bytes [begin, end) a call touches through one argument; empty (end == begin) for an absent
// or empty view.
struct ByteRange {
  const char* name = "";
  uintptr_t begin = 0;
  uintptr_t end = 0;
};
// A view that check_tensor has accepted.
ByteRange byte_range(const char* name, const TensorView& view);
inline ByteRange byte_range(const char* name, const void* data, size_t bytes) {
  const auto begin = reinterpret_cast<uintptr_t>(data);
  if (data == nullptr) return {name, begin, begin};
  // A caller-declared size (a scratch's) may run past the address space: the range then ends at
  // its top instead of wrapping below begin, where every overlap test would miss it.
  const uintptr_t room = UINTPTR_MAX - begin;
  return {name, begin, bytes > room ? UINTPTR_MAX : begin + static_cast<uintptr_t>(bytes)};
}

// `written` shares no byte with any of `others` (reads may share bytes with reads; a buffer the
// call writes may not share any with another argument, or the result would depend on the order
// in which the device happens to touch them).
void check_disjoint(const char* where, const ByteRange& written,
                    std::initializer_list<ByteRange> others);
// A stage's outputs share no byte with each other or with its inputs.
void check_outputs_apart(const char* where, std::initializer_list<ByteRange> outputs,
                         std::initializer_list<ByteRange> inputs);
// The optional diagnostics buffer (int32[kDiagnosticCount]) and num_valid_tokens (one int32),
// after checking that a given pointer is int32-aligned: the kernels and the CPU backend load and
// update them as int32 (atomically, for diagnostics), which a misaligned address would fault.
inline ByteRange int32_range(const char* where, const char* name, const int32_t* data,
                             size_t count) {
  check_pointer_alignment(where, name, data, alignof(int32_t));
  return byte_range(name, data, count * sizeof(int32_t));
}
inline ByteRange diagnostics_range(const char* where, const int32_t* diagnostics,
                                   const char* name = "diagnostics") {
  return int32_range(where, name, diagnostics, kDiagnosticCount);
}
inline ByteRange num_valid_range(const char* where, const int32_t* num_valid_tokens,
                                 const char* name = "num_valid_tokens") {
  return int32_range(where, name, num_valid_tokens, 1);
}

// The stream names a device this build can run on.
inline void check_stream(const char* where, const Stream& stream) {
  IRONMOE_CHECK(stream.device.is_cpu() || stream.device.is_cuda(), where,
                "stream: expected a cpu or cuda device");
  IRONMOE_CHECK(stream.device.is_cpu() || stream.device.index >= 0, where,
                "stream: expected a cuda device index >= 0, got ", stream.device.index);
  IRONMOE_CHECK(stream.device.is_cpu() || cuda_compiled(), where,
                "stream: a cuda device was given but this build of ironmoe has no CUDA backend");
}

// Storage dtypes (x, weights, activations, out) and router logits: f32 and bf16 everywhere, f16
// on CUDA only.
inline void check_float_dtype(const char* where, const char* name, DType dtype, Device device) {
  const bool ok = dtype == DType::f32 || dtype == DType::bf16 ||
                  (dtype == DType::f16 && device.is_cuda());
  IRONMOE_CHECK(ok, where, name, ": expected dtype ",
                device.is_cuda() ? "f32, bf16 or f16" : "f32 or bf16 (f16 is CUDA only)", " on ",
                device_name(device.type), ", got ", dtype_name(dtype));
}

inline void check_top_k(const char* where, const char* name, int64_t top_k) {
  IRONMOE_CHECK(top_k >= 1 && top_k <= core::kMaxTopK, where, name, ": expected top_k in [1, ",
                core::kMaxTopK, "], got ", top_k);
}

// Resolves expert_end = -1 to num_experts and checks 0 <= begin <= end <= num_experts (an empty
// range is an expert-parallel shard without experts).
inline int64_t check_expert_range(const char* where, int64_t num_experts, int64_t expert_begin,
                                  int64_t expert_end) {
  IRONMOE_CHECK(num_experts >= 1 && num_experts <= kMaxIndex, where,
                "num_experts: expected a value in [1, ", kMaxIndex, "], got ", num_experts);
  IRONMOE_CHECK(expert_end >= -1 && expert_end <= num_experts, where,
                "expert_end: expected -1 (all) or a value in [0, ", num_experts, "], got ",
                expert_end);
  const int64_t end = expert_end < 0 ? num_experts : expert_end;
  IRONMOE_CHECK(expert_begin >= 0 && expert_begin <= end, where,
                "expert_begin: expected a value in [0, ", end, "] (expert_end), got ",
                expert_begin);
  return end;
}

// Scratch the device backend asked for: enough bytes, and a pointer when any are needed.
inline void check_scratch(const char* where, const void* scratch, size_t scratch_bytes,
                          size_t required) {
  IRONMOE_CHECK(scratch_bytes >= required, where, "scratch_bytes: expected at least ", required,
                " bytes, got ", scratch_bytes);
  IRONMOE_CHECK(required == 0 || scratch != nullptr, where, "scratch: expected a buffer of ",
                required, " bytes, got a null pointer");
}

// The expert weights of a stage or layer call (names in messages start with `prefix`).
struct QuantizedWeightViews {
  const char* prefix;
  const TensorView& w13;
  const TensorView& w2;
  const TensorView& w13_scale;
  const TensorView& w2_scale;
  const TensorView& w13_input_scale;
  const TensorView& w2_input_scale;
};

// quant is one of the four schemes (an out-of-range enum value is an error naming `quant`).
void check_quant_scheme(const char* where, QuantScheme quant);

// w13 [E_local, 2I, H] and w2 [E_local, H, I] in `dtype` (quant none, and then no scales) or
// E4M3 with the scheme's f32 scales (docs/formats.md "FP8 experts"); static activation scales
// only with fp8_tensor.
void check_quantized_weights(const char* where, const QuantizedWeightViews& weights,
                             QuantScheme quant, DType dtype, int64_t local_experts, int64_t hidden,
                             int64_t intermediate, Device device);

// Routing parameters against the number of experts and k (also used by MoeConfig::validate).
void check_routing(const char* where, const RoutingConfig& routing, int64_t num_experts,
                   int64_t top_k);

}  // namespace ironmoe::api
