// The heavy part of RANSAC on the GPU: the soft inlier score and hard inlier count of every
// hypothesis of every frame over every cell of its coordinate map.
//
// One block per (frame, hypothesis): its threads stride over the cells with the per-cell code
// shared with the CPU twin (dense_map.h / cell_score.h), in float64 like the core, then reduce in
// a fixed tree, so a hypothesis' score is the same on every run (no atomics; the argmax and hence
// the pose never depend on scheduling). A frame's map (H * W * 3 values, ~60 KB at 80x60) is re-read
// by each of its hypotheses' blocks from L2.
#include <climits>
#include <vector>

#include "device.cuh"
#include "score_cuda.h"

namespace transpose {
namespace {

constexpr int kThreads = 256;  // power of two (the tree reduction halves it)

template <typename T>
__global__ void __launch_bounds__(kThreads)
    score_kernel(DenseMaps<T> maps, const FrameIntrinsics* __restrict__ K, const cell::CellPose* __restrict__ poses,
                 int M, cell::CellParams c, double* __restrict__ scores, int* __restrict__ inliers) {
  const int64_t k = blockIdx.x;  // b * M + h
  const int b = static_cast<int>(k / M);
  const cell::CellPose p = poses[k];
  const FrameIntrinsics in = K[b];
  double s = 0.0;
  int n = 0;
  const int64_t cells = maps.cells();
  for (int64_t i = threadIdx.x; i < cells; i += kThreads) accumulate_cell(maps, b, i, p, in, c, s, n);

  __shared__ double ss[kThreads];
  __shared__ int ns[kThreads];
  ss[threadIdx.x] = s;
  ns[threadIdx.x] = n;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      ss[threadIdx.x] += ss[threadIdx.x + half];
      ns[threadIdx.x] += ns[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    scores[k] = ss[0];
    inliers[k] = ns[0];
  }
}

// Round a byte count up so that the next segment of a carved buffer stays 8-byte aligned.
size_t aligned(size_t bytes) { return (bytes + 15) / 16 * 16; }

}  // namespace

template <typename T>
void score_hypotheses_cuda(const DenseMaps<T>& d_maps, const FrameIntrinsics* K, const Pose* poses, int M,
                           const ScoreParams& sp, double* scores, int* inliers, int device, uintptr_t stream) {
  const int64_t total = static_cast<int64_t>(d_maps.batch) * M;
  if (total <= 0) return;
  if (total > INT_MAX) throw std::runtime_error("score_hypotheses_cuda: more than 2^31 - 1 hypotheses in one call");
  cuda::DeviceGuard guard(device);
  const cudaStream_t s = cuda::as_stream(stream);

  // Hypotheses in the kernel's form (pre-multiplied by fx, fy), built on the host.
  std::vector<cell::CellPose> cell_poses(static_cast<size_t>(total));
  for (int64_t k = 0; k < total; ++k) {
    const FrameIntrinsics& in = K[k / M];
    cell_poses[static_cast<size_t>(k)] = cell::make_cell_pose(poses[k], in.fx, in.fy);
  }
  const size_t pose_bytes = aligned(sizeof(cell::CellPose) * total);
  const size_t k_bytes = aligned(sizeof(FrameIntrinsics) * d_maps.batch);
  const size_t score_bytes = aligned(sizeof(double) * total);
  const size_t count_bytes = sizeof(int) * total;
  cuda::StreamBuffer buffer(pose_bytes + k_bytes + score_bytes + count_bytes, device, s);
  auto* d_poses = reinterpret_cast<cell::CellPose*>(buffer.data());
  auto* d_K = reinterpret_cast<FrameIntrinsics*>(buffer.data() + pose_bytes);
  auto* d_scores = reinterpret_cast<double*>(buffer.data() + pose_bytes + k_bytes);
  auto* d_inliers = reinterpret_cast<int*>(buffer.data() + pose_bytes + k_bytes + score_bytes);

  cuda::check(cudaMemcpyAsync(d_poses, cell_poses.data(), sizeof(cell::CellPose) * total, cudaMemcpyHostToDevice, s),
              "cudaMemcpyAsync (poses)");
  cuda::check(cudaMemcpyAsync(d_K, K, sizeof(FrameIntrinsics) * d_maps.batch, cudaMemcpyHostToDevice, s),
              "cudaMemcpyAsync (intrinsics)");
  score_kernel<T><<<static_cast<unsigned>(total), kThreads, 0, s>>>(d_maps, d_K, d_poses, M,
                                                                     cell::make_cell_params(sp), d_scores, d_inliers);
  cuda::check(cudaGetLastError(), "score_kernel launch");
  cuda::check(cudaMemcpyAsync(scores, d_scores, sizeof(double) * total, cudaMemcpyDeviceToHost, s),
              "cudaMemcpyAsync (scores)");
  cuda::check(cudaMemcpyAsync(inliers, d_inliers, sizeof(int) * total, cudaMemcpyDeviceToHost, s),
              "cudaMemcpyAsync (inlier counts)");
  // The host copies above are from pageable memory: wait before `cell_poses` and the outputs are used.
  cuda::check(cudaStreamSynchronize(s), "score_kernel");
}

template void score_hypotheses_cuda<float>(const DenseMaps<float>&, const FrameIntrinsics*, const Pose*, int,
                                           const ScoreParams&, double*, int*, int, uintptr_t);
template void score_hypotheses_cuda<double>(const DenseMaps<double>&, const FrameIntrinsics*, const Pose*, int,
                                            const ScoreParams&, double*, int*, int, uintptr_t);

}  // namespace transpose
