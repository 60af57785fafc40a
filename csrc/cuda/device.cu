// Device queries and copies for the host side of the GPU path.
#include "device.cuh"
#include "score_cuda.h"

namespace transpose {

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: report zero, leave no error behind
    return 0;
  }
  return count;
}

void cuda_copy_to_host(void* dst, const void* d_src, size_t bytes, int device, uintptr_t stream) {
  if (bytes == 0) return;
  cuda::DeviceGuard guard(device);
  const cudaStream_t s = cuda::as_stream(stream);
  cuda::check(cudaMemcpyAsync(dst, d_src, bytes, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync (map to host)");
  cuda::check(cudaStreamSynchronize(s), "cudaStreamSynchronize (map to host)");
}

}  // namespace transpose
