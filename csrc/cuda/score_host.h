// Host twin of the GPU scorer: every hypothesis of every frame scored on every cell of a batch of
// dense maps, on the CPU, with the kernel's own per-cell code (dense_map.h, cell_score.h). Built in
// every configuration, it is how the kernel math is tested without a GPU, and the scorer of the
// batched-scoring RANSAC driver when no GPU is used.
#pragma once

#include "core/camera.h"
#include "core/scoring.h"
#include "dense_map.h"

namespace transpose {

// poses: (B, M) world-to-camera hypotheses, K: (B,) intrinsics; writes scores (B, M) (soft inlier
// score, every cell) and inliers (B, M) (err < tau). Threads over hypotheses (<= 0: all).
template <typename T>
void score_hypotheses_host(const DenseMaps<T>& maps, const FrameIntrinsics* K, const Pose* poses, int M,
                           const ScoreParams& sp, double* scores, int* inliers, int num_threads);

}  // namespace transpose
