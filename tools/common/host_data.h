#pragma once
// Test data for the tools: deterministic random numbers, and conversion between float and the
// storage dtypes (f32, bf16). bf16 rounding uses the float64 reference's conversion, so nothing
// the tools compare against comes from the library under test.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/device_memory.h"
#include "ironmoe/types.h"

namespace ironmoe::tools {

// splitmix64: tiny, fast, and good enough for test data. Independent streams come from
// different seeds (see stream_seed).
class Random {
 public:
  explicit Random(uint64_t seed) : state_(seed) {}
  uint64_t next();
  float uniform(float low, float high);  // [low, high)
  int64_t below(int64_t n);              // [0, n), n > 0

 private:
  uint64_t state_;
};

// A seed for stream `index` of `seed`, decorrelated from its neighbours.
uint64_t stream_seed(uint64_t seed, uint64_t index);

// f32 or bf16 storage; throws std::invalid_argument for other dtypes.
void store(const float* values, size_t count, DType dtype, void* out);
void load(const void* data, size_t count, DType dtype, float* out);
// `values` as `dtype` storage would hold them (bf16 rounding), widened back to float.
std::vector<float> round_trip(std::vector<float> values, DType dtype);

// Buffer <-> float vectors in the buffer's storage dtype; offsets and counts in elements.
DeviceBuffer upload_as(Device device, const std::vector<float>& values, DType dtype);
// Overwrites the start of an existing buffer (its address stays, e.g. for a captured graph).
void upload_into(DeviceBuffer& buffer, const std::vector<float>& values, DType dtype);
std::vector<float> download_as(const DeviceBuffer& buffer, size_t count, DType dtype,
                               size_t offset = 0);

// Fills the first `count` elements of `buffer` with uniform values in [-bound, bound) stored as
// `dtype`. Work is split into fixed chunks, each with its own stream, so the contents depend on
// the seed alone (not on the number of threads); large device buffers go through a bounded host
// staging area.
void fill_uniform(DeviceBuffer& buffer, DType dtype, size_t count, float bound, uint64_t seed,
                  ThreadPool& pool);

// Fills the first `count` bytes of `buffer` with E4M3 codes drawn uniformly from the 254 finite
// ones (the two NaN codes redrawn as +-448), chunked and seeded like fill_uniform.
void fill_fp8_codes(DeviceBuffer& buffer, size_t count, uint64_t seed, ThreadPool& pool);

}  // namespace ironmoe::tools
