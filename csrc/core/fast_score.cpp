#include "fast_score.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "exp_bounded.h"
#include "math3.h"
#include "rng.h"
#include "simd.h"

namespace transpose {
namespace {

constexpr uint64_t kPackStream = 0xFFFFFFFFFFFEULL;  // random stream of the preemptive subset
constexpr int kBlock = 256;  // cells summed in float32 before the running sum (in double) takes them
// Early exit gives up on a hypothesis only when it misses the bound by more than float32 rounding
// of the sums could explain (~1e-6 relative), so it never drops the float32 argmax.
constexpr double kExitMargin = 1e-5;

// Copy the valid correspondences idx[0..n) of `f` into `c`, scene points relative to `origin`.
void fill(const Frame& f, const int* idx, int n, const double* origin, PackedCells& c) {
  const size_t m = static_cast<size_t>(n);
  c.n = n;
  c.X.resize(m); c.Y.resize(m); c.Z.resize(m); c.u.resize(m); c.v.resize(m); c.w.resize(m);
  for (size_t k = 0; k < m; ++k) {
    const size_t i = static_cast<size_t>(idx[k]);
    c.X[k] = static_cast<float>(f.X[i] - origin[0]);
    c.Y[k] = static_cast<float>(f.Y[i] - origin[1]);
    c.Z[k] = static_cast<float>(f.Z[i] - origin[2]);
    c.u[k] = static_cast<float>(f.uc[i]);
    c.v[k] = static_cast<float>(f.vc[i]);
    c.w[k] = static_cast<float>(f.w[i]);
  }
  std::copy(origin, origin + 3, c.origin);
}

// The same for every valid correspondence, in order: straight loops that vectorise.
TRANSPOSE_HOT
void fill_all(const Frame& f, const double* origin, PackedCells& c) {
  const size_t m = static_cast<size_t>(f.n);
  c.n = f.n;
  c.X.resize(m); c.Y.resize(m); c.Z.resize(m); c.u.resize(m); c.v.resize(m); c.w.resize(m);
  const double ox = origin[0], oy = origin[1], oz = origin[2];
  float* __restrict X = c.X.data();
  float* __restrict Y = c.Y.data();
  float* __restrict Z = c.Z.data();
  float* __restrict U = c.u.data();
  float* __restrict V = c.v.data();
  float* __restrict W = c.w.data();
  // Without `omp simd` GCC left this 12-stream loop scalar (~20 instructions a cell).
  const double* __restrict fX = f.X.data();
  const double* __restrict fY = f.Y.data();
  const double* __restrict fZ = f.Z.data();
  const double* __restrict fU = f.uc.data();
  const double* __restrict fV = f.vc.data();
  const double* __restrict fW = f.w.data();
#pragma omp simd
  for (size_t i = 0; i < m; ++i) {
    X[i] = static_cast<float>(fX[i] - ox);
    Y[i] = static_cast<float>(fY[i] - oy);
    Z[i] = static_cast<float>(fZ[i] - oz);
    U[i] = static_cast<float>(fU[i]);
    V[i] = static_cast<float>(fV[i]);
    W[i] = static_cast<float>(fW[i]);
  }
  std::copy(origin, origin + 3, c.origin);
}

}  // namespace

void pack_frame(const Frame& f, int subset_size, uint64_t seed, PackedFrame& out) {
  const int n = f.n;
  // Any scene point will do as the origin: float32 then only has to span the scene, not its offset.
  const double origin[3] = {n > 0 ? f.X[0] : 0.0, n > 0 ? f.Y[0] : 0.0, n > 0 ? f.Z[0] : 0.0};
  fill_all(f, origin, out.all);
  // Partial Fisher-Yates: position k < m takes a uniform pick among the cells not yet taken.
  const int m = std::min(std::max(subset_size, 0), n);
  Buffer<int> idx(static_cast<size_t>(m > 0 ? n : 0));
  std::iota(idx.begin(), idx.end(), 0);
  Rng rng(seed, kPackStream);
  for (int k = 0; k < m; ++k)
    std::swap(idx[static_cast<size_t>(k)], idx[k + rng.below(static_cast<uint32_t>(n - k))]);
  fill(f, idx.data(), m, origin, out.subset);
}

TRANSPOSE_HOT
ScoreOut soft_score_packed(const PackedCells& p, const Intrinsics& K, const Pose& pose, const ScoreParams& sp,
                           int begin, int end, double stop_below) {
  // x_cam = R (X + origin) + t = R X + t', with t' in double; rows 0 and 1 pre-multiplied by fx, fy.
  double to[3];
  matvec3(pose.R, p.origin, to);
  for (int k = 0; k < 3; ++k) to[k] += pose.t[k];
  const float a0 = static_cast<float>(K.fx * pose.R[0]), a1 = static_cast<float>(K.fx * pose.R[1]),
              a2 = static_cast<float>(K.fx * pose.R[2]), b0 = static_cast<float>(K.fx * to[0]);
  const float a3 = static_cast<float>(K.fy * pose.R[3]), a4 = static_cast<float>(K.fy * pose.R[4]),
              a5 = static_cast<float>(K.fy * pose.R[5]), b1 = static_cast<float>(K.fy * to[1]);
  const float r6 = static_cast<float>(pose.R[6]), r7 = static_cast<float>(pose.R[7]),
              r8 = static_cast<float>(pose.R[8]), t2 = static_cast<float>(to[2]);
  const float min_depth = static_cast<float>(kMinDepth);
  const double cut_d = std::min(sp.cut, sp.max_err);
  // Errors clamped at max_err still contribute when max_err < cut (as in soft_score).
  const float clamp_term =
      sp.max_err < sp.cut ? static_cast<float>(1.0 / (1.0 + std::exp(sp.beta * (sp.max_err - sp.tau)))) : 0.0f;
  const float cut2 = static_cast<float>(cut_d * cut_d), tau2 = static_cast<float>(sp.tau * sp.tau);
  const float beta = static_cast<float>(sp.beta), tau = static_cast<float>(sp.tau);
  const float* __restrict X = p.X.data();
  const float* __restrict Y = p.Y.data();
  const float* __restrict Z = p.Z.data();
  const float* __restrict U = p.u.data();
  const float* __restrict V = p.v.data();
  const float* __restrict w = p.w.data();
  const bool may_stop = std::isfinite(stop_below);
  const double threshold = stop_below - kExitMargin * (std::fabs(stop_below) + 1.0);
  double remaining = 0.0;
  if (may_stop) {
#pragma omp simd reduction(+ : remaining)
    for (int i = begin; i < end; ++i) remaining += w[i];
  }
  double score = 0.0;
  int inliers = 0;
  ScoreOut out;
  for (int b = begin; b < end; b += kBlock) {
    const int e = std::min(end, b + kBlock);
    float s = 0.0f, wb = 0.0f;
    int c = 0;
#pragma omp simd reduction(+ : s, c, wb)
    for (int i = b; i < e; ++i) {
      const float xs = a0 * X[i] + a1 * Y[i] + a2 * Z[i] + b0;
      const float ys = a3 * X[i] + a4 * Y[i] + a5 * Z[i] + b1;
      const float zc = r6 * X[i] + r7 * Y[i] + r8 * Z[i] + t2;
      const float iz = 1.0f / (zc < min_depth ? min_depth : zc);
      const float du = xs * iz - U[i];
      const float dv = ys * iz - V[i];
      // Behind the camera: pushed beyond every threshold by adding, not selecting, so that the
      // compiler keeps the loads unconditional (a select becomes slow masked loads).
      const float e2 = du * du + dv * dv + (zc < min_depth ? 1e30f : 0.0f);
      const float e = e2 < cut2 ? e2 : cut2;
      const float soft = w[i] / (1.0f + exp_f32(beta * (std::sqrt(e) - tau)));
      s += e2 < cut2 ? soft : w[i] * clamp_term;
      c += e2 < tau2 ? 1 : 0;
      wb += w[i];
    }
    score += s;
    inliers += c;
    remaining -= wb;
    if (may_stop && e < end && score + remaining * sp.cmax < threshold) {
      out.score = score;
      out.inliers = inliers;
      out.complete = false;
      return out;
    }
  }
  out.score = score;
  out.inliers = inliers;
  return out;
}

}  // namespace transpose
