// GPU entry points, defined in the .cu files of this folder and built only with TRANSPOSE_CUDA
// (TRANSPOSE_HAVE_CUDA=1). Plain C++ declarations, so host code compiled by the C++ compiler can
// call them without CUDA headers. Pointers named d_* (and the coords / weights of a DenseMaps
// passed here) are device pointers, e.g. torch tensors' data_ptr(); `stream` is a cudaStream_t as
// an integer (torch's current stream, so the work is ordered after whatever wrote the maps) and
// `device` the index of the GPU they live on. CUDA errors throw std::runtime_error naming the call.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/camera.h"
#include "core/scoring.h"
#include "dense_map.h"

namespace transpose {

// Number of CUDA devices the runtime sees (0 when there is no driver or device; never throws).
int cuda_device_count();

// Copy `bytes` from device to host memory, ordered on `stream`, and wait for it.
void cuda_copy_to_host(void* dst, const void* d_src, size_t bytes, int device, uintptr_t stream);

// The contract of score_hypotheses_host with the maps on the GPU: K (B,) and poses (B, M) are host
// arrays (uploaded here), scores (B, M) and inliers (B, M) host outputs. Waits for the result.
template <typename T>
void score_hypotheses_cuda(const DenseMaps<T>& d_maps, const FrameIntrinsics* K, const Pose* poses, int M,
                           const ScoreParams& sp, double* scores, int* inliers, int device, uintptr_t stream);

}  // namespace transpose
