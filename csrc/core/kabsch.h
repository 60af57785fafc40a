// Rigid alignment of two point sets (Kabsch/Umeyama without scale), for RGB-D hypotheses.
#pragma once

#include "camera.h"

namespace transpose {

// Find the pose with dst_k ~= R src_k + t minimising sum_k w_k |R src_k + t - dst_k|^2.
//
// src, dst: (n, 3) row-major (for RGB-D: src = scene points, dst = camera-frame points).
// weights:  (n,) non-negative, or nullptr for all ones.
// Returns false when the problem is degenerate (n < 3, zero total weight, collinear points).
bool rigid_align(const double* src, const double* dst, const double* weights, int n, Pose& pose);

// Same, with the points given by index into (N, 3) arrays; the indices select n of them.
bool rigid_align_indexed(const double* src, const double* dst, const double* weights, const int* index,
                         int n, Pose& pose);

}  // namespace transpose
