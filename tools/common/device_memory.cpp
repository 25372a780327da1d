#include "common/device_memory.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <stdexcept>
#include <utility>

#if defined(IRONMOE_WITH_CUDA)
#include "common/cuda_runtime.h"
#endif

namespace ironmoe::tools {
namespace {

constexpr size_t kHostAlignment = 4096;

size_t host_available_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  size_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  const long pages = sysconf(_SC_AVPHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  return pages > 0 && page_size > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page_size)
                                    : 0;
}

[[noreturn]] void no_cuda() {
  throw std::invalid_argument(
      "this build of ironmoe has no CUDA backend (configure with nvcc "
      "present, or -DIRONMOE_CUDA=ON)");
}

}  // namespace

Device resolve_device(const std::string& text) {
  if (text == "cpu") return Device::cpu();
  if (text == "cuda") {
    if (!cuda_compiled()) no_cuda();
    if (!cuda_available()) throw std::invalid_argument("--device cuda: no CUDA GPU is visible");
    return Device::cuda(0);
  }
  if (text == "auto") return cuda_compiled() && cuda_available() ? Device::cuda(0) : Device::cpu();
  throw std::invalid_argument("--device: expected auto, cpu or cuda, got '" + text + "'");
}

std::string device_label(Device device) {
  if (device.is_cpu()) return "cpu";
  return "cuda:" + std::to_string(device.index);
}

DeviceBuffer::DeviceBuffer(Device device, size_t bytes) : device_(device), bytes_(bytes) {
  const size_t rounded = (bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
  const size_t allocated = rounded == 0 ? kHostAlignment : rounded;
  if (device.is_cpu()) {
    data_ = std::aligned_alloc(kHostAlignment, allocated);
    if (data_ == nullptr) throw std::bad_alloc();
    return;
  }
#if defined(IRONMOE_WITH_CUDA)
  data_ = cuda_rt::allocate(device.index, allocated);
#else
  no_cuda();
#endif
}

DeviceBuffer::~DeviceBuffer() { release(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : device_(other.device_),
      data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    release();
    device_ = other.device_;
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::release() {
  if (data_ == nullptr) return;
  if (device_.is_cpu()) {
    std::free(data_);
  } else {
#if defined(IRONMOE_WITH_CUDA)
    cuda_rt::release(device_.index, data_);
#endif
  }
  data_ = nullptr;
  bytes_ = 0;
}

void DeviceBuffer::check_range(size_t bytes, size_t offset, const char* what) const {
  if (offset > bytes_ || bytes > bytes_ - offset) {
    throw std::out_of_range(std::string("DeviceBuffer::") + what + ": " + std::to_string(bytes) +
                            " bytes at offset " + std::to_string(offset) + " exceed the buffer (" +
                            std::to_string(bytes_) + " bytes)");
  }
}

void DeviceBuffer::upload(const void* host, size_t bytes, size_t offset) {
  check_range(bytes, offset, "upload");
  if (bytes == 0) return;
  char* dst = static_cast<char*>(data_) + offset;
  if (device_.is_cpu()) {
    std::memcpy(dst, host, bytes);
    return;
  }
#if defined(IRONMOE_WITH_CUDA)
  cuda_rt::copy_to_device(device_.index, dst, host, bytes);
#endif
}

void DeviceBuffer::download(void* host, size_t bytes, size_t offset) const {
  check_range(bytes, offset, "download");
  if (bytes == 0) return;
  const char* src = static_cast<const char*>(data_) + offset;
  if (device_.is_cpu()) {
    std::memcpy(host, src, bytes);
    return;
  }
#if defined(IRONMOE_WITH_CUDA)
  cuda_rt::copy_to_host(device_.index, host, src, bytes);
#endif
}

void DeviceBuffer::fill_bytes(uint8_t value) {
  if (bytes_ == 0) return;
  if (device_.is_cpu()) {
    std::memset(data_, value, bytes_);
    return;
  }
#if defined(IRONMOE_WITH_CUDA)
  cuda_rt::fill_bytes(device_.index, data_, value, bytes_);
#endif
}

TensorView DeviceBuffer::view(DType dtype, std::initializer_list<int64_t> shape) const {
  return view_at(0, dtype, shape);
}

TensorView DeviceBuffer::view_at(size_t offset, DType dtype,
                                 std::initializer_list<int64_t> shape) const {
  TensorView tensor =
      TensorView::contiguous(static_cast<char*>(data_) + offset, dtype, shape, device_);
  const size_t needed = offset + static_cast<size_t>(tensor.numel()) * dtype_size(dtype);
  if (needed > bytes_) {
    throw std::out_of_range("DeviceBuffer::view: shape " + tensor.shape_string() + " of " +
                            dtype_name(dtype) + " needs " + std::to_string(needed) +
                            " bytes, the buffer has " + std::to_string(bytes_));
  }
  return tensor;
}

void synchronize(Device device) {
  if (device.is_cpu()) return;
#if defined(IRONMOE_WITH_CUDA)
  cuda_rt::synchronize(device.index);
#endif
}

size_t available_bytes(Device device) {
  if (device.is_cpu()) return host_available_bytes();
#if defined(IRONMOE_WITH_CUDA)
  return cuda_rt::free_bytes(device.index);
#else
  no_cuda();
#endif
}

Executor::Executor(Device device, int cpu_threads)
    : device_(device), pool_(std::make_unique<ThreadPool>(cpu_threads)) {
  if (device.is_cuda()) {
#if defined(IRONMOE_WITH_CUDA)
    cuda_stream_ = cuda_rt::create_stream(device.index);
#else
    no_cuda();
#endif
  }
}

Executor::~Executor() {
#if defined(IRONMOE_WITH_CUDA)
  if (cuda_stream_ != nullptr) cuda_rt::destroy_stream(device_.index, cuda_stream_);
#endif
}

Stream Executor::stream() const {
  if (device_.is_cuda()) return Stream::cuda(cuda_stream_, device_.index);
  return Stream::cpu(pool_.get());
}

}  // namespace ironmoe::tools
