// DSAC*'s fixed-count RANSAC on a batch of dense coordinate maps, with the heavy part (every
// hypothesis on every cell) handed to one batched scorer: the GPU kernel, or its host twin.
//
// Sampling (4 cells, P3P on 3, the 4th must agree) and the refinement of the winner stay on the
// CPU in the core's own functions (draw_hypothesis, refine_hypothesis) with the core's random
// streams Rng(seed, h), so for a seed the hypotheses are exactly those of ransac_batch and the
// winner is the same argmax (ties to the lowest index); only the rounding of the score sums
// differs. Every hypothesis is scored in full (no early exit: on a GPU pruning saves nothing).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/frame.h"
#include "core/ransac.h"
#include "dense_map.h"

namespace transpose {

// Scores M hypotheses per frame: poses (B, M) -> scores (B, M), inliers (B, M). May throw.
using BatchScorer = std::function<void(const Pose* poses, int M, const ScoreParams& sp, double* scores, int* inliers)>;

// The core's frames for a host copy of the maps: pixel grid, float64 points, weights (cells with a
// zero weight dropped); status[b] is build_frame's status. Threads over frames (<= 0: all).
template <typename T>
void frames_from_maps(const DenseMaps<T>& maps, const FrameIntrinsics* K, int num_threads, std::vector<Frame>& frames,
                      std::vector<int>& status);

// Test-mode RANSAC of every frame (status[b] != kOk: that frame's result carries the status).
// Training and adaptive options give kBadOptions: they need the per-hypothesis core loop. Threads
// over hypotheses for sampling and over frames for refinement (<= 0: all).
void ransac_batch_scored(const std::vector<Frame>& frames, const std::vector<int>& status, const RansacOptions& o,
                         const std::vector<uint64_t>& seeds, int num_threads, const BatchScorer& scorer,
                         std::vector<RansacResult>& results);

}  // namespace transpose
