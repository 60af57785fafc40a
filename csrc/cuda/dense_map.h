// A batch of coordinate maps as the network writes them, read in place by the batched scorers.
//
// coords (B, 3, H, W) row-major (float or double): channel c of frame b is a plane of H * W
// values, so X, Y and Z are already structure-of-arrays and a kernel reads them without a
// reshuffle. Cell i = row * W + col sees the pixel (stride * col + stride / 2, stride * row +
// stride / 2). weights (B, H, W) float64, or null for all ones; a zero weight drops the cell (it
// may then hold NaN), exactly as build_frame drops it for the CPU core.
#pragma once

#include <cstdint>

#include "cell_score.h"

namespace transpose {

template <typename T>
struct DenseMaps {
  const T* coords = nullptr;        // (B, 3, H, W)
  const double* weights = nullptr;  // (B, H, W) or null
  int batch = 0, height = 0, width = 0;
  double stride = 8.0;

  TRANSPOSE_HD int64_t cells() const { return static_cast<int64_t>(height) * width; }
};

// Per-frame intrinsics as the core takes them: (fx, fy, cx, cy).
struct FrameIntrinsics {
  double fx, fy, cx, cy;
};

// Add cell i of frame b to a hypothesis' soft score `s` and hard inlier count `n` (the loop body
// shared by the kernel and its host twin). Selects instead of branching on a dropped cell, so a
// NaN it may hold never reaches the sums.
template <typename T>
TRANSPOSE_HD void accumulate_cell(const DenseMaps<T>& m, int b, int64_t i, const cell::CellPose& p,
                                  const FrameIntrinsics& k, const cell::CellParams& c, double& s, int& n) {
  const int64_t plane = m.cells();
  const T* base = m.coords + 3 * plane * b;
  const double X = static_cast<double>(base[i]);
  const double Y = static_cast<double>(base[plane + i]);
  const double Z = static_cast<double>(base[2 * plane + i]);
  const double w = m.weights ? m.weights[plane * b + i] : 1.0;
  // 32-bit division: a frame has at most 2^30 cells (checked by the bindings), and 64-bit integer
  // division is a long emulated sequence on the GPU
  const int cell_index = static_cast<int>(i);
  const int row = cell_index / m.width, col = cell_index - row * m.width;
  const double uc = cell::cell_centre(col, m.stride) - k.cx;
  const double vc = cell::cell_centre(row, m.stride) - k.cy;
  const double e2 = cell::squared_error(p, X, Y, Z, uc, vc);
  const bool used = w != 0.0;
  const double term = cell::soft_term(e2, w, c);
  s += used ? term : 0.0;
  n += used ? cell::is_inlier(e2, c) : 0;
}

}  // namespace transpose
