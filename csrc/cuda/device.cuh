// Small CUDA runtime helpers shared by the .cu files: error checks that throw, a guard that makes a
// device current for a scope, and a stream-ordered scratch buffer.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace transpose {
namespace cuda {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so the next call starts clean
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
  }
}

inline cudaStream_t as_stream(uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// Makes `device` current for the calling thread and restores the previous one on exit (the
// caller's thread may be working on another GPU, e.g. torch's current device).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// Device memory for one call, allocated and freed in stream order (cudaMallocAsync: no device-wide
// synchronisation, unlike cudaMalloc/cudaFree); plain cudaMalloc where memory pools are missing.
class StreamBuffer {
 public:
  StreamBuffer(size_t bytes, int device, cudaStream_t stream) : stream_(stream) {
    int pools = 0;
    check(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device), "cudaDeviceGetAttribute");
    async_ = pools != 0;
    if (bytes == 0) return;
    if (async_)
      check(cudaMallocAsync(&ptr_, bytes, stream_), "cudaMallocAsync");
    else
      check(cudaMalloc(&ptr_, bytes), "cudaMalloc");
  }
  ~StreamBuffer() {
    if (!ptr_) return;
    if (async_)
      cudaFreeAsync(ptr_, stream_);
    else
      cudaFree(ptr_);
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;

  char* data() const { return static_cast<char*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
  bool async_ = false;
};

}  // namespace cuda
}  // namespace transpose
