// The per-cell arithmetic of the DSAC* soft inlier score, written once for the CPU and the GPU.
//
// These are the exact operations of csrc/core/scoring.cpp (soft_score), restated as
// __host__ __device__ inline functions: the kernels call them on the device, and the host twin
// (score_host.cpp, compiled in every build) calls the same source on the CPU, so the kernel math is
// unit-tested against the core without a GPU. Keep the two in step: a change to scoring.cpp's
// formula must be mirrored here (tests/test_cuda.py compares them to 1e-9).
//
// Per correspondence: err = min(|project(R X + t) - pixel|, max_err), err = max_err behind the
// camera (depth < kMinDepth); term = w (1 - sigmoid(beta (err - tau))), beta = 5 / tau; a hard
// inlier is err < tau.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/camera.h"
#include "core/exp_bounded.h"
#include "core/scoring.h"

namespace transpose {
namespace cell {

// One hypothesis in the form the inner loop wants: rows 0 and 1 of R and t pre-multiplied by
// fx and fy (so a pixel needs no multiply), row 2 as is.
struct CellPose {
  double a0, a1, a2, b0;  // fx * (R row 0, t0)
  double a3, a4, a5, b1;  // fy * (R row 1, t1)
  double r6, r7, r8, t2;  // R row 2, t2
};

inline CellPose make_cell_pose(const Pose& p, double fx, double fy) {
  return CellPose{fx * p.R[0], fx * p.R[1], fx * p.R[2], fx * p.t[0],
                  fy * p.R[3], fy * p.R[4], fy * p.R[5], fy * p.t[1],
                  p.R[6],      p.R[7],      p.R[8],      p.t[2]};
}

// Squared reprojection error of scene point (X, Y, Z) against the pixel (uc, vc) given relative to
// the principal point; 1e300 when the point is behind the camera (then clamped like max_err).
TRANSPOSE_HD double squared_error(const CellPose& p, double X, double Y, double Z, double uc, double vc) {
  const double xs = p.a0 * X + p.a1 * Y + p.a2 * Z + p.b0;
  const double ys = p.a3 * X + p.a4 * Y + p.a5 * Z + p.b1;
  const double zc = p.r6 * X + p.r7 * Y + p.r8 * Z + p.t2;
  const double iz = 1.0 / (zc < kMinDepth ? kMinDepth : zc);
  const double du = xs * iz - uc;
  const double dv = ys * iz - vc;
  const double e = du * du + dv * dv;
  return zc < kMinDepth ? 1e300 : e;
}

// Constants of the soft term, derived on the host from the core's ScoreParams exactly as
// soft_score derives them.
struct CellParams {
  double tau, beta;
  double cut2;        // min(cut, max_err)^2: beyond it a term is the constant clamp_term
  double tau2;        // hard inlier: e2 < tau2
  double clamp_term;  // term per unit weight of an error clamped at max_err (0 when negligible)
};

inline CellParams make_cell_params(const ScoreParams& sp) {
  const double cut = sp.cut < sp.max_err ? sp.cut : sp.max_err;
  CellParams c;
  c.tau = sp.tau;
  c.beta = sp.beta;
  c.cut2 = cut * cut;
  c.tau2 = sp.tau * sp.tau;
  c.clamp_term = sp.max_err < sp.cut ? 1.0 / (1.0 + std::exp(sp.beta * (sp.max_err - sp.tau))) : 0.0;
  return c;
}

// w (1 - sigmoid(beta (err - tau))) of one cell from its squared error.
TRANSPOSE_HD double soft_term(double e2, double w, const CellParams& c) {
  const double e = e2 < c.cut2 ? e2 : c.cut2;
  const double soft = w / (1.0 + exp_bounded(c.beta * (::sqrt(e) - c.tau)));
  return e2 < c.cut2 ? soft : w * c.clamp_term;
}

TRANSPOSE_HD int is_inlier(double e2, const CellParams& c) { return e2 < c.tau2 ? 1 : 0; }

// Pixel of map cell (i, j) at `stride`, as geometry.cell_centers places it.
TRANSPOSE_HD double cell_centre(int index, double stride) { return index * stride + stride / 2.0; }

}  // namespace cell
}  // namespace transpose
