// One frame's correspondences, laid out for fast scoring (structure of arrays), plus the map back
// to the caller's indices (invalid / zero-weight correspondences are dropped on construction).
#pragma once

#include <vector>

#include "buffer.h"
#include "camera.h"

namespace transpose {

enum Status : int {
  kOk = 0,
  kTooFewPoints = 1,       // fewer than 4 valid correspondences
  kNonFinite = 2,          // NaN or inf in a valid correspondence
  kBadIntrinsics = 3,      // non-positive or non-finite focal length / principal point
  kDegenerate = 4,         // scene points (or pixels) coincident or collinear
  kNoHypothesis = 5,       // no sample produced a hypothesis that its 4th cell agrees with
  kBadOptions = 6,         // option out of range
  kBadWeights = 7,         // negative or non-finite weight
};

const char* status_message(int status);

struct Frame {
  Intrinsics K;
  int n = 0;        // valid correspondences
  int n_total = 0;  // correspondences given by the caller
  double wsum = 0.0;
  // Structure of arrays over the valid correspondences (scoring and refinement loops).
  Buffer<double> u, v, X, Y, Z, w;
  Buffer<double> uc, vc;  // u - cx, v - cy (scoring)
  Buffer<double> points;  // (n, 3) scene points, row-major (RGB-D only: rigid alignment), else empty
  Buffer<double> camera;  // (n, 3) camera-frame points (RGB-D only), else empty
  Buffer<int> original;   // valid index -> caller's index
};

// The caller's scene points, float64 or float32: coordinate k of point i at data[i * stride + k * step]
// ((n, 3) rows: stride 3, step 1; (3, n) planes, as a coordinate map holds them: stride 1, step n;
// any other strides, e.g. a channel-last map read as planes: stride 3, step 1).
struct PointArray {
  const double* f64 = nullptr;
  const float* f32 = nullptr;
  long stride = 3, step = 1;
};

// Build a frame from caller arrays.
//   pixels (n_total, 2), points (n_total of them), camera_points (n_total, 3) or nullptr,
//   weights (n_total,) or nullptr (all ones); a zero weight drops the correspondence.
// With camera_points, entries with a non-positive depth are treated as missing depth (dropped).
// Returns a Status.
int build_frame(const double* pixels, const PointArray& points, const double* camera_points, const double* weights,
                int n_total, const Intrinsics& K, Frame& frame);

// A coordinate map's cells: cell i = r * width + c sees pixel (stride * c + stride / 2,
// stride * r + stride / 2).
struct CellGrid {
  int height = 0, width = 0;
  double stride = 0.0;
};

// The frame of a whole coordinate map (every cell counts): build_frame with the grid's pixels,
// without reading them from an array.
int build_frame_grid(const CellGrid& grid, const PointArray& points, const Intrinsics& K, Frame& frame);

// The same for (n_total, 3) float64 rows.
inline int build_frame(const double* pixels, const double* points, const double* camera_points,
                       const double* weights, int n_total, const Intrinsics& K, Frame& frame) {
  PointArray p;
  p.f64 = points;
  return build_frame(pixels, p, camera_points, weights, n_total, K, frame);
}

}  // namespace transpose
