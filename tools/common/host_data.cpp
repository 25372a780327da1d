#include "common/host_data.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "reference_moe.h"

namespace ironmoe::tools {
namespace {

constexpr size_t kChunkElements = size_t{1} << 16;
constexpr size_t kStagingElements = size_t{1} << 26;  // 64 Mi elements per device upload

void require_storage_dtype(DType dtype) {
  if (dtype != DType::f32 && dtype != DType::bf16) {
    throw std::invalid_argument(std::string("tools: storage dtype must be f32 or bf16, got ") +
                                dtype_name(dtype));
  }
}

// Elements [first, first + count) of the seeded sequence, written as dtype into out.
void generate(DType dtype, size_t first, size_t count, float bound, uint64_t seed, void* out,
              ThreadPool& pool) {
  const size_t first_chunk = first / kChunkElements;
  const size_t last_chunk = (first + count + kChunkElements - 1) / kChunkElements;
  const size_t elem = dtype_size(dtype);
  pool.parallel_for(static_cast<int64_t>(last_chunk - first_chunk),
                    [&](int64_t begin, int64_t end) {
                      std::vector<float> values(kChunkElements);
                      for (int64_t c = begin; c < end; ++c) {
                        const size_t chunk = first_chunk + static_cast<size_t>(c);
                        Random random(stream_seed(seed, chunk));
                        const size_t chunk_begin = chunk * kChunkElements;
                        const size_t lo = std::max(chunk_begin, first);
                        const size_t hi = std::min(chunk_begin + kChunkElements, first + count);
                        // Draw the whole chunk so element i always gets the same value, then keep
                        // [lo, hi).
                        for (size_t i = 0; i < kChunkElements; ++i)
                          values[i] = random.uniform(-bound, bound);
                        store(values.data() + (lo - chunk_begin), hi - lo, dtype,
                              static_cast<char*>(out) + (lo - first) * elem);
                      }
                    });
}

// Codes [first, first + count) of the seeded sequence, written to out.
void generate_codes(size_t first, size_t count, uint64_t seed, uint8_t* out, ThreadPool& pool) {
  const size_t first_chunk = first / kChunkElements;
  const size_t last_chunk = (first + count + kChunkElements - 1) / kChunkElements;
  pool.parallel_for(static_cast<int64_t>(last_chunk - first_chunk),
                    [&](int64_t begin, int64_t end) {
                      std::vector<uint8_t> codes(kChunkElements);
                      for (int64_t c = begin; c < end; ++c) {
                        const size_t chunk = first_chunk + static_cast<size_t>(c);
                        Random random(stream_seed(seed, chunk));
                        for (size_t i = 0; i < kChunkElements; i += 8) {
                          uint64_t bits = random.next();
                          for (size_t b = 0; b < 8; ++b, bits >>= 8) {
                            const auto code = static_cast<uint8_t>(bits & 0xff);
                            codes[i + b] = (code & 0x7f) == 0x7f ? code - 1 : code;  // NaN -> 448
                          }
                        }
                        const size_t chunk_begin = chunk * kChunkElements;
                        const size_t lo = std::max(chunk_begin, first);
                        const size_t hi = std::min(chunk_begin + kChunkElements, first + count);
                        std::memcpy(out + (lo - first), codes.data() + (lo - chunk_begin), hi - lo);
                      }
                    });
}

}  // namespace

uint64_t Random::next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

float Random::uniform(float low, float high) {
  const float unit = static_cast<float>(next() >> 40) * (1.0f / 16777216.0f);  // 24 bits
  return low + (high - low) * unit;
}

int64_t Random::below(int64_t n) { return static_cast<int64_t>(next() % static_cast<uint64_t>(n)); }

uint64_t stream_seed(uint64_t seed, uint64_t index) {
  Random mix(seed ^ (index * 0xd1b54a32d192ed03ull));
  return mix.next();
}

void store(const float* values, size_t count, DType dtype, void* out) {
  require_storage_dtype(dtype);
  if (count == 0) return;  // out may be null for an empty tensor (memcpy's arguments may not)
  if (dtype == DType::f32) {
    std::memcpy(out, values, count * sizeof(float));
    return;
  }
  auto* bits = static_cast<uint16_t*>(out);
  for (size_t i = 0; i < count; ++i) bits[i] = reference::to_bf16_bits(values[i]);
}

void load(const void* data, size_t count, DType dtype, float* out) {
  require_storage_dtype(dtype);
  if (count == 0) return;
  if (dtype == DType::f32) {
    std::memcpy(out, data, count * sizeof(float));
    return;
  }
  const auto* bits = static_cast<const uint16_t*>(data);
  for (size_t i = 0; i < count; ++i) out[i] = reference::from_bf16_bits(bits[i]);
}

std::vector<float> round_trip(std::vector<float> values, DType dtype) {
  std::vector<char> stored(values.size() * dtype_size(dtype));
  store(values.data(), values.size(), dtype, stored.data());
  load(stored.data(), values.size(), dtype, values.data());
  return values;
}

DeviceBuffer upload_as(Device device, const std::vector<float>& values, DType dtype) {
  std::vector<char> stored(values.size() * dtype_size(dtype));
  store(values.data(), values.size(), dtype, stored.data());
  DeviceBuffer buffer(device, stored.size());
  buffer.upload(stored.data(), stored.size());
  return buffer;
}

void upload_into(DeviceBuffer& buffer, const std::vector<float>& values, DType dtype) {
  std::vector<char> stored(values.size() * dtype_size(dtype));
  store(values.data(), values.size(), dtype, stored.data());
  buffer.upload(stored.data(), stored.size());
}

std::vector<float> download_as(const DeviceBuffer& buffer, size_t count, DType dtype,
                               size_t offset) {
  const size_t elem = dtype_size(dtype);
  std::vector<char> stored(count * elem);
  buffer.download(stored.data(), stored.size(), offset * elem);
  std::vector<float> values(count);
  load(stored.data(), count, dtype, values.data());
  return values;
}

void fill_uniform(DeviceBuffer& buffer, DType dtype, size_t count, float bound, uint64_t seed,
                  ThreadPool& pool) {
  require_storage_dtype(dtype);
  const size_t elem = dtype_size(dtype);
  if (count * elem > buffer.bytes()) {
    throw std::out_of_range("fill_uniform: " + std::to_string(count) +
                            " elements exceed the "
                            "buffer (" +
                            std::to_string(buffer.bytes()) + " bytes)");
  }
  if (buffer.device().is_cpu()) {
    generate(dtype, 0, count, bound, seed, buffer.data(), pool);
    return;
  }
  std::vector<char> staging(std::min(count, kStagingElements) * elem);
  for (size_t first = 0; first < count; first += kStagingElements) {
    const size_t n = std::min(kStagingElements, count - first);
    generate(dtype, first, n, bound, seed, staging.data(), pool);
    buffer.upload(staging.data(), n * elem, first * elem);
  }
}

void fill_fp8_codes(DeviceBuffer& buffer, size_t count, uint64_t seed, ThreadPool& pool) {
  if (count > buffer.bytes()) {
    throw std::out_of_range("fill_fp8_codes: " + std::to_string(count) +
                            " codes exceed the buffer (" + std::to_string(buffer.bytes()) +
                            " bytes)");
  }
  if (buffer.device().is_cpu()) {
    generate_codes(0, count, seed, static_cast<uint8_t*>(buffer.data()), pool);
    return;
  }
  std::vector<uint8_t> staging(std::min(count, kStagingElements));
  for (size_t first = 0; first < count; first += kStagingElements) {
    const size_t n = std::min(kStagingElements, count - first);
    generate_codes(first, n, seed, staging.data(), pool);
    buffer.upload(staging.data(), n, first);
  }
}

}  // namespace ironmoe::tools
