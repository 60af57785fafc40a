// The test-time scoring path: the DSAC* soft inlier score (scoring.h) in float32, 8 lanes wide on
// AVX2 machines, over a copy of the frame packed once per call.
//
// Preemptive scoring ranks every hypothesis on a fixed random subset of the cells first and scores
// only the best few on all of them (ransac.cpp), so a frame is packed twice: all valid
// correspondences in frame order, and the random subset (in random order, so that each of its
// prefixes is a random subset too). Scene points are stored relative to a point of the scene,
// which keeps float32 accurate for scenes far from the world origin.
//
// Accuracy: scores agree with soft_score() to ~1e-6 relative (float32 terms, summed in float32
// per block of 256 and in double across blocks); training and every reported score stay float64.
#pragma once

#include <cstdint>
#include <vector>

#include "buffer.h"
#include "camera.h"
#include "frame.h"
#include "scoring.h"

namespace transpose {

// Correspondences in float32 structure-of-arrays form.
struct PackedCells {
  int n = 0;
  Buffer<float> X, Y, Z;  // scene point minus `origin`
  Buffer<float> u, v;     // pixel minus principal point
  Buffer<float> w;
  double origin[3] = {0, 0, 0};
};

struct PackedFrame {
  PackedCells all;     // every valid correspondence, in frame order
  PackedCells subset;  // a uniform random subset of them (preemptive scoring)
};

// Pack the valid correspondences of `f`; the subset has min(subset_size, f.n) distinct cells drawn
// from a fixed random stream of `seed` (empty when subset_size <= 0).
void pack_frame(const Frame& f, int subset_size, uint64_t seed, PackedFrame& out);

// Soft score (and hard inliers) of `pose` over the packed cells [begin, end). Stops early
// (complete = false) once even a perfect remainder of the range could not reach `stop_below`;
// pass -infinity to score every cell of the range.
ScoreOut soft_score_packed(const PackedCells& c, const Intrinsics& K, const Pose& pose, const ScoreParams& sp,
                           int begin, int end, double stop_below);

}  // namespace transpose
