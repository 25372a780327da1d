#pragma once
// Memory and streams on the device a tool runs on, so the same bench and check code runs on the
// CPU and on CUDA: host memory (page-aligned) for the CPU, cudaMalloc/cudaMemcpy for CUDA (only in
// builds with IRONMOE_WITH_CUDA; see cuda_runtime.h).
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "ironmoe/stream.h"
#include "ironmoe/tensor.h"

namespace ironmoe::tools {

// "auto" | "cpu" | "cuda": auto picks CUDA when this build has it and a GPU is visible. Throws
// std::invalid_argument for any other text, or for "cuda" when CUDA cannot be used.
Device resolve_device(const std::string& text);
std::string device_label(Device device);  // "cpu", "cuda:0"

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // Never a null pointer, even for 0 bytes: a view of an empty tensor must still count as given.
  DeviceBuffer(Device device, size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }

  void upload(const void* host, size_t bytes, size_t offset = 0);
  void download(void* host, size_t bytes, size_t offset = 0) const;
  void fill_bytes(uint8_t value);  // every byte of the buffer

  template <class T>
  void upload_vector(const std::vector<T>& host, size_t offset = 0) {
    upload(host.data(), host.size() * sizeof(T), offset);
  }
  template <class T>
  std::vector<T> download_vector(size_t count, size_t offset = 0) const {
    std::vector<T> host(count);
    download(host.data(), count * sizeof(T), offset);
    return host;
  }

  // A contiguous view of the buffer's first bytes as a tensor of the given shape.
  TensorView view(DType dtype, std::initializer_list<int64_t> shape) const;
  // The same, starting `offset` bytes in.
  TensorView view_at(size_t offset, DType dtype, std::initializer_list<int64_t> shape) const;

 private:
  void release();
  void check_range(size_t bytes, size_t offset, const char* what) const;

  Device device_ = Device::cpu();
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// A device buffer holding `host`, for small index and parameter arrays.
template <class T>
DeviceBuffer to_device(Device device, const std::vector<T>& host) {
  DeviceBuffer buffer(device, host.size() * sizeof(T));
  buffer.upload_vector(host);
  return buffer;
}

// Waits until all work queued on the device is done (nothing to wait for on the CPU).
void synchronize(Device device);

// Bytes a new allocation can get: MemAvailable on the CPU, free device memory on CUDA.
size_t available_bytes(Device device);

// Where stages run: a thread pool on the CPU, a stream of its own on CUDA (capturable into a
// graph, unlike the legacy stream).
class Executor {
 public:
  explicit Executor(Device device, int cpu_threads = 0);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  Device device() const { return device_; }
  Stream stream() const;
  ThreadPool& pool() { return *pool_; }  // host-side work (data generation, CPU timing)
  void* cuda_stream() const { return cuda_stream_; }

 private:
  Device device_;
  std::unique_ptr<ThreadPool> pool_;
  void* cuda_stream_ = nullptr;
};

}  // namespace ironmoe::tools
