#include "scoring.h"

#include "exp_bounded.h"

#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace transpose {
namespace {

constexpr int kBlock = 128;

// Squared reprojection error of one correspondence (a huge value when the point is behind the
// camera). Branch-free so that loops around it vectorise.
inline double squared_error(double a0, double a1, double a2, double a3, double a4, double a5, double r6,
                            double r7, double r8, double b0, double b1, double t2, double X, double Y, double Z,
                            double u, double v) {
  // Rows 0 and 1 of R (and t) come pre-multiplied by fx, fy and the pixels pre-shifted by cx, cy.
  const double xs = a0 * X + a1 * Y + a2 * Z + b0;
  const double ys = a3 * X + a4 * Y + a5 * Z + b1;
  const double zc = r6 * X + r7 * Y + r8 * Z + t2;
  const double iz = 1.0 / (zc < kMinDepth ? kMinDepth : zc);
  const double du = xs * iz - u;
  const double dv = ys * iz - v;
  const double e = du * du + dv * dv;
  return zc < kMinDepth ? 1e300 : e;
}

#define TRANSPOSE_POSE_LOCALS(p, f)                                                                        \
  const double a0 = f.K.fx * p.R[0], a1 = f.K.fx * p.R[1], a2 = f.K.fx * p.R[2], b0 = f.K.fx * p.t[0];   \
  const double a3 = f.K.fy * p.R[3], a4 = f.K.fy * p.R[4], a5 = f.K.fy * p.R[5], b1 = f.K.fy * p.t[1];   \
  const double r6 = p.R[6], r7 = p.R[7], r8 = p.R[8], t2 = p.t[2];                                      \
  const double* __restrict X = f.X.data();                                                             \
  const double* __restrict Y = f.Y.data();                                                             \
  const double* __restrict Z = f.Z.data();                                                             \
  const double* __restrict U = f.uc.data();                                                            \
  const double* __restrict V = f.vc.data()
#define TRANSPOSE_SQUARED_ERROR(i) \
  squared_error(a0, a1, a2, a3, a4, a5, r6, r7, r8, b0, b1, t2, X[i], Y[i], Z[i], U[i], V[i])

}  // namespace

ScoreParams make_score_params(double tau, double max_err) {
  ScoreParams sp;
  sp.tau = tau;
  sp.beta = 5.0 / tau;
  sp.max_err = max_err;
  sp.cut = tau + 36.0 / sp.beta;
  sp.cmax = 1.0 / (1.0 + std::exp(-sp.beta * tau));
  return sp;
}

double reprojection_error(const Frame& f, const Pose& pose, int i, const ScoreParams& sp) {
  TRANSPOSE_POSE_LOCALS(pose, f);
  return std::min(std::sqrt(TRANSPOSE_SQUARED_ERROR(i)), sp.max_err);
}

TRANSPOSE_HOT
ScoreOut soft_score(const Frame& f, const Pose& pose, const ScoreParams& sp, double stop_below) {
  TRANSPOSE_POSE_LOCALS(pose, f);
  const double* __restrict w = f.w.data();
  const double cut = std::min(sp.cut, sp.max_err);
  // Errors clamped at max_err still contribute when max_err < cut.
  const double clamp_term = sp.max_err < sp.cut ? 1.0 / (1.0 + std::exp(sp.beta * (sp.max_err - sp.tau))) : 0.0;
  const double cut2 = cut * cut, tau2 = sp.tau * sp.tau, beta = sp.beta, tau = sp.tau;
  const double threshold = stop_below * (1.0 - 1e-12) - 1e-12;  // margin against rounding
  double remaining = f.wsum, score = 0.0, inliers = 0.0;
  ScoreOut out;
  for (int begin = 0; begin < f.n; begin += kBlock) {
    const int end = std::min(f.n, begin + kBlock);
    double s = 0.0, c = 0.0, wb = 0.0;
    // Branch-free so that it vectorises; terms beyond the cut are exactly clamp_term (usually 0).
#pragma omp simd reduction(+ : s, c, wb)
    for (int i = begin; i < end; ++i) {
      const double e2 = TRANSPOSE_SQUARED_ERROR(i);
      const double e = e2 < cut2 ? e2 : cut2;
      const double soft = w[i] / (1.0 + exp_bounded(beta * (std::sqrt(e) - tau)));
      s += e2 < cut2 ? soft : w[i] * clamp_term;
      c += e2 < tau2 ? 1.0 : 0.0;
      wb += w[i];
    }
    score += s;
    inliers += c;
    remaining -= wb;
    // Early exit: even if every remaining correspondence were perfect this pose cannot win.
    if (end < f.n && score + remaining * sp.cmax < threshold) {
      out.score = score;
      out.inliers = static_cast<int>(inliers);
      out.complete = false;
      return out;
    }
  }
  out.score = score;
  out.inliers = static_cast<int>(inliers);
  return out;
}

TRANSPOSE_HOT
ScoreOut soft_score_collect(const Frame& f, const Pose& pose, const ScoreParams& sp, int* out) {
  TRANSPOSE_POSE_LOCALS(pose, f);
  const double* __restrict w = f.w.data();
  const double cut = std::min(sp.cut, sp.max_err);
  const double clamp_term = sp.max_err < sp.cut ? 1.0 / (1.0 + std::exp(sp.beta * (sp.max_err - sp.tau))) : 0.0;
  const double cut2 = cut * cut, tau2 = sp.tau * sp.tau, beta = sp.beta, tau = sp.tau;
  alignas(32) double e2[kBlock];
  ScoreOut result;
  for (int begin = 0; begin < f.n; begin += kBlock) {
    const int end = std::min(f.n, begin + kBlock);
    // The terms as in soft_score, from errors kept for the inlier list below.
    double s = 0.0;
#pragma omp simd
    for (int i = begin; i < end; ++i) e2[i - begin] = TRANSPOSE_SQUARED_ERROR(i);
#pragma omp simd reduction(+ : s)
    for (int i = begin; i < end; ++i) {
      const double q = e2[i - begin];
      const double e = q < cut2 ? q : cut2;
      const double soft = w[i] / (1.0 + exp_bounded(beta * (std::sqrt(e) - tau)));
      s += q < cut2 ? soft : w[i] * clamp_term;
    }
    result.score += s;
    for (int k = 0; k < end - begin; ++k)
      if (e2[k] < tau2) out[result.inliers++] = begin + k;
  }
  return result;
}

TRANSPOSE_HOT
int collect_inliers(const Frame& f, const Pose& pose, const ScoreParams& sp, int* out) {
  TRANSPOSE_POSE_LOCALS(pose, f);
  alignas(32) double e2[kBlock];
  const double tau2 = sp.tau * sp.tau;
  int count = 0;
  for (int begin = 0; begin < f.n; begin += kBlock) {
    const int end = std::min(f.n, begin + kBlock);
#pragma omp simd
    for (int i = begin; i < end; ++i) e2[i - begin] = TRANSPOSE_SQUARED_ERROR(i);
    for (int k = 0; k < end - begin; ++k)
      if (e2[k] < tau2) out[count++] = begin + k;
  }
  return count;
}

TRANSPOSE_HOT
void reprojection_errors(const Frame& f, const Pose& pose, const ScoreParams& sp, double* out) {
  TRANSPOSE_POSE_LOCALS(pose, f);
  const double max_err = sp.max_err;
#pragma omp simd
  for (int i = 0; i < f.n; ++i) {
    const double e = std::sqrt(TRANSPOSE_SQUARED_ERROR(i));
    out[i] = e < max_err ? e : max_err;
  }
}

}  // namespace transpose
