// gather and combine on CUDA vs the CPU backend, bit for bit, for f32/bf16/f16, hidden sizes
// whose rows are and are not multiples of 16 bytes (the 16-byte and the element-wide paths),
// strided and misaligned x / out rows, maps with -1 rows (and a stray slot past T*k), and a
// device-side num_valid_tokens. Outputs start poisoned; untouched rows and row padding must keep
// the poison.
//
// Tolerance: none. gather copies bytes; combine accumulates in fp32 in the same order as the CPU
// with separately rounded multiply and add, then rounds once, so results are identical. f16 is
// CUDA-only: its gather is checked against the CPU's copy of the same bytes viewed as bf16, its
// combine against the same fp32 loop on the host.
#include <cuda_fp16.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "cuda_test_util.h"

namespace ironmoe::cuda_test {
namespace {

struct Maps {
  std::vector<int32_t> slot_to_row;  // [T, k]
  std::vector<int32_t> row_to_slot;  // [R]
};

// A real plan (CPU backend) over random ids with invalid ones, so some rows are unused.
Maps make_maps(int64_t tokens, int64_t top_k, Layout layout, std::mt19937_64& rng) {
  constexpr int64_t kExperts = 16;
  const int64_t capacity = layout == Layout::batched ? std::max<int64_t>(1, tokens / 3) : 0;
  std::uniform_int_distribution<int32_t> id(-1, kExperts);
  std::vector<int32_t> ids(static_cast<size_t>(tokens * top_k));
  for (int32_t& v : ids) v = id(rng);
  const int64_t rows = layout == Layout::batched ? kExperts * capacity : tokens * top_k;
  Maps maps;
  maps.slot_to_row.resize(ids.size());
  maps.row_to_slot.resize(static_cast<size_t>(rows));
  std::vector<int32_t> counts(kExperts), offsets(kExperts + 1);
  PlanArgs args;
  args.topk_ids = TensorView::contiguous(ids.data(), DType::i32, {tokens, top_k});
  args.num_experts = kExperts;
  args.layout = layout;
  args.capacity = capacity;
  args.expert_counts = TensorView::contiguous(counts.data(), DType::i32, {kExperts});
  args.expert_offsets = TensorView::contiguous(offsets.data(), DType::i32, {kExperts + 1});
  args.slot_to_row = TensorView::contiguous(maps.slot_to_row.data(), DType::i32, {tokens, top_k});
  args.row_to_slot = TensorView::contiguous(maps.row_to_slot.data(), DType::i32, {rows});
  plan(args, cpu_stream());
  return maps;
}

struct Shape {
  DType dtype;
  int64_t hidden;
  int64_t stride_pad;   // row stride = hidden + pad (x for gather, out for combine)
  int64_t base_offset;  // elements the first row is shifted by (misaligns it when odd)
  Layout layout;
};

std::string shape_text(const Shape& s) {
  return std::string(dtype_name(s.dtype)) + " H " + std::to_string(s.hidden) + " pad " +
         std::to_string(s.stride_pad) + " offset " + std::to_string(s.base_offset) +
         (s.layout == Layout::batched ? " batched" : " contiguous");
}

std::vector<Shape> shapes() {
  std::vector<Shape> all;
  for (DType dtype : {DType::f32, DType::bf16, DType::f16})
    for (int64_t hidden : {2048, 1000, 333})
      for (int64_t pad : {0, 8, 3})
        for (int64_t offset : {0, 1})
          all.push_back({dtype, hidden, pad, offset,
                         (hidden + pad + offset) % 2 == 0 ? Layout::contiguous : Layout::batched});
  return all;
}

void expect_same_bytes(const char* name, const std::vector<uint8_t>& gpu,
                       const std::vector<uint8_t>& expected, size_t element) {
  ASSERT_EQ(gpu.size(), expected.size()) << name;
  for (size_t i = 0; i < gpu.size(); ++i) {
    if (gpu[i] != expected[i]) {
      ADD_FAILURE() << name << ": first difference at element " << i / element << " (byte " << i
                    << ")";
      return;
    }
  }
}

class GatherCombine : public CudaTestWithParam<Shape> {};

TEST_P(GatherCombine, GatherMatchesCpu) {
  const Shape& s = GetParam();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_trace(seed) + ", " + shape_text(s));
  std::mt19937_64 rng(seed);
  const int64_t tokens = std::uniform_int_distribution<int64_t>(1, 300)(rng);
  const int64_t top_k = 4;
  Maps maps = make_maps(tokens, top_k, s.layout, rng);
  maps.row_to_slot.back() = static_cast<int32_t>(tokens * top_k);  // not a slot: row unused
  const int64_t rows = static_cast<int64_t>(maps.row_to_slot.size());
  const int64_t stride = s.hidden + s.stride_pad;
  const size_t element = dtype_size(s.dtype);

  std::normal_distribution<float> normal;
  std::vector<float> x_values(static_cast<size_t>(s.base_offset + tokens * stride));
  for (float& v : x_values) v = normal(rng);
  const std::vector<uint8_t> x_bytes = encode(s.dtype, x_values);
  const std::vector<uint8_t> poison(static_cast<size_t>(rows * s.hidden) * element,
                                    kPoisonFloatByte);

  // CPU: f16 rows are moved as the same bytes viewed as bf16 (gather copies bytes).
  const DType cpu_dtype = s.dtype == DType::f16 ? DType::bf16 : s.dtype;
  std::vector<uint8_t> expected = poison;
  GatherArgs cpu_args;
  cpu_args.x = rows_view(x_bytes.data() + s.base_offset * element, cpu_dtype, tokens, s.hidden,
                         stride, Device::cpu());
  cpu_args.row_to_slot = TensorView::contiguous(maps.row_to_slot.data(), DType::i32, {rows});
  cpu_args.top_k = top_k;
  cpu_args.permuted = TensorView::contiguous(expected.data(), cpu_dtype, {rows, s.hidden});
  gather(cpu_args, cpu_stream());

  const Device gpu = Device::cuda(0);
  const DeviceBuffer<uint8_t> x(x_bytes);
  const DeviceBuffer<int32_t> row_to_slot(maps.row_to_slot);
  DeviceBuffer<uint8_t> permuted(poison);
  GatherArgs args;
  args.x = rows_view(x.data() + s.base_offset * element, s.dtype, tokens, s.hidden, stride, gpu);
  args.row_to_slot = TensorView::contiguous(row_to_slot.data(), DType::i32, {rows}, gpu);
  args.top_k = top_k;
  args.permuted = TensorView::contiguous(permuted.data(), s.dtype, {rows, s.hidden}, gpu);
  gather(args, Stream::cuda(stream()));
  sync();
  expect_same_bytes("permuted", permuted.download(), expected, element);
}

// out[t] = sum_j w * Y[row] in fp32, j in order, each step a rounded multiply then add.
std::vector<float> combine_on_host(const std::vector<float>& y, const Maps& maps,
                                   const std::vector<float>& weights, int64_t tokens, int64_t top_k,
                                   int64_t hidden, int64_t valid) {
  std::vector<float> out(static_cast<size_t>(tokens * hidden), 0.0f);
  for (int64_t t = 0; t < valid; ++t) {
    for (int64_t j = 0; j < top_k; ++j) {
      const int32_t row = maps.slot_to_row[t * top_k + j];
      if (row < 0) continue;
      for (int64_t c = 0; c < hidden; ++c) {
        const float product = weights[t * top_k + j] * y[row * hidden + c];
        out[t * hidden + c] = out[t * hidden + c] + product;
      }
    }
  }
  return out;
}

TEST_P(GatherCombine, CombineMatchesCpu) {
  const Shape& s = GetParam();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_trace(seed) + ", " + shape_text(s));
  std::mt19937_64 rng(seed);
  const int64_t tokens = std::uniform_int_distribution<int64_t>(1, 300)(rng);
  const int64_t top_k = 4;
  const Maps maps = make_maps(tokens, top_k, s.layout, rng);
  const int64_t rows = static_cast<int64_t>(maps.row_to_slot.size());
  const int64_t stride = s.hidden + s.stride_pad;
  const size_t element = dtype_size(s.dtype);
  const auto num_valid =
      static_cast<int32_t>(std::uniform_int_distribution<int64_t>(tokens / 2, tokens)(rng));

  std::normal_distribution<float> normal;
  std::vector<float> y(static_cast<size_t>(rows * s.hidden));
  for (float& v : y) v = normal(rng);
  y = round_to(s.dtype, y);
  std::vector<float> weights(static_cast<size_t>(tokens * top_k));
  for (float& w : weights) w = std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
  const std::vector<uint8_t> y_bytes = encode(s.dtype, y);
  const size_t out_bytes = static_cast<size_t>(s.base_offset + tokens * stride) * element;
  const std::vector<uint8_t> poison(out_bytes, kPoisonFloatByte);

  std::vector<uint8_t> expected = poison;
  if (s.dtype == DType::f16) {
    const std::vector<float> sums =
        combine_on_host(y, maps, weights, tokens, top_k, s.hidden, num_valid);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t c = 0; c < s.hidden; ++c) {
        const uint16_t bits = __half_as_ushort(__float2half_rn(sums[t * s.hidden + c]));
        std::memcpy(&expected[static_cast<size_t>(s.base_offset + t * stride + c) * element], &bits,
                    element);
      }
    }
  } else {
    CombineArgs cpu_args;
    cpu_args.permuted_out = TensorView::contiguous(y_bytes.data(), s.dtype, {rows, s.hidden});
    cpu_args.slot_to_row =
        TensorView::contiguous(maps.slot_to_row.data(), DType::i32, {tokens, top_k});
    cpu_args.topk_weights = TensorView::contiguous(weights.data(), DType::f32, {tokens, top_k});
    cpu_args.out = rows_view(expected.data() + s.base_offset * element, s.dtype, tokens, s.hidden,
                             stride, Device::cpu());
    cpu_args.num_valid_tokens = &num_valid;
    combine(cpu_args, cpu_stream());
  }

  const Device gpu = Device::cuda(0);
  const DeviceBuffer<uint8_t> y_device(y_bytes);
  const DeviceBuffer<int32_t> slot_to_row(maps.slot_to_row);
  const DeviceBuffer<float> weights_device(weights);
  const DeviceBuffer<int32_t> num_valid_device(std::vector<int32_t>{num_valid});
  DeviceBuffer<uint8_t> out(poison);
  CombineArgs args;
  args.permuted_out = TensorView::contiguous(y_device.data(), s.dtype, {rows, s.hidden}, gpu);
  args.slot_to_row = TensorView::contiguous(slot_to_row.data(), DType::i32, {tokens, top_k}, gpu);
  args.topk_weights =
      TensorView::contiguous(weights_device.data(), DType::f32, {tokens, top_k}, gpu);
  args.out =
      rows_view(out.data() + s.base_offset * element, s.dtype, tokens, s.hidden, stride, gpu);
  args.num_valid_tokens = num_valid_device.data();
  combine(args, Stream::cuda(stream()));
  sync();
  expect_same_bytes("out", out.download(), expected, element);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GatherCombine, ::testing::ValuesIn(shapes()),
                         [](const ::testing::TestParamInfo<Shape>& param_info) {
                           const Shape& s = param_info.param;
                           return std::string(dtype_name(s.dtype)) + "_H" +
                                  std::to_string(s.hidden) + "_pad" + std::to_string(s.stride_pad) +
                                  "_off" + std::to_string(s.base_offset);
                         });

}  // namespace
}  // namespace ironmoe::cuda_test
