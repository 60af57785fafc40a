#include "refine.h"

#include <algorithm>
#include <cmath>

#include "buffer.h"
#include "fast_score.h"
#include "kabsch.h"
#include "math3.h"
#include "simd.h"

namespace transpose {
namespace {

// Relative cost changes that count as converged: float64 sums, and float32 sums (~1e-6 rounding).
constexpr double kTolerance64 = 1e-9;
constexpr double kTolerance32 = 1e-5;

// Inlier correspondences gathered into contiguous arrays, so the normal-equation pass is a
// straight (SIMD-reducible) loop: scene points relative to `origin`, pixels relative to the
// principal point. float64 from the frame (origin 0); in test mode float32 from the packed cells
// (origin: theirs, a scene point), for twice the SIMD lanes.
template <class T>
struct Inliers {
  Buffer<T> X, Y, Z, u, v, w;
  double origin[3] = {0, 0, 0};
  int n = 0;
  void assign(const Frame& f, const int* idx, int count) {
    gather(f.X.data(), f.Y.data(), f.Z.data(), f.uc.data(), f.vc.data(), f.w.data(), idx, count);
  }
  void assign(const PackedCells& c, const int* idx, int count) {
    gather(c.X.data(), c.Y.data(), c.Z.data(), c.u.data(), c.v.data(), c.w.data(), idx, count);
    std::copy(c.origin, c.origin + 3, origin);
  }

 private:
  void gather(const T* cx, const T* cy, const T* cz, const T* cu, const T* cv, const T* cw, const int* idx,
              int count) {
    const size_t m = static_cast<size_t>(count);
    X.resize(m); Y.resize(m); Z.resize(m); u.resize(m); v.resize(m); w.resize(m);
    for (int k = 0; k < count; ++k) {
      const int i = idx[k];
      X[k] = cx[i]; Y[k] = cy[i]; Z[k] = cz[i]; u[k] = cu[i]; v[k] = cv[i]; w[k] = cw[i];
    }
    n = count;
  }
};
using Gathered = Inliers<double>;
using Gathered32 = Inliers<float>;

// Weighted squared reprojection cost, normal equations H (6x6) and gradient g of the update
// x_cam <- exp([w]x) x_cam + dt, d = (w, dt). Points behind the camera are skipped (zero weight).
// One pass serves both the acceptance test of a step and the next step. Terms are computed in T
// and summed in T over blocks of 256 points, in double across blocks: for float32, the pose is
// moved to the gathered origin (t' = R o + t) and rounded, and the sums carry ~1e-6 relative
// rounding, which moves the optimum they define by ~1e-7 px (lm_run's tolerance takes the rest).
template <class T>
TRANSPOSE_HOT double pnp_normal_equations(const Inliers<T>& G, const Intrinsics& K, const Pose& p, double* H,
                                          double* g) {
  double to[3];
  matvec3(p.R, G.origin, to);
  const T r0 = static_cast<T>(p.R[0]), r1 = static_cast<T>(p.R[1]), r2 = static_cast<T>(p.R[2]),
          r3 = static_cast<T>(p.R[3]), r4 = static_cast<T>(p.R[4]), r5 = static_cast<T>(p.R[5]),
          r6 = static_cast<T>(p.R[6]), r7 = static_cast<T>(p.R[7]), r8 = static_cast<T>(p.R[8]);
  const T t0 = static_cast<T>(to[0] + p.t[0]), t1 = static_cast<T>(to[1] + p.t[1]), t2 = static_cast<T>(to[2] + p.t[2]);
  const T fx = static_cast<T>(K.fx), fy = static_cast<T>(K.fy), min_depth = static_cast<T>(kMinDepth);
  const T* __restrict X = G.X.data();
  const T* __restrict Y = G.Y.data();
  const T* __restrict Z = G.Z.data();
  const T* __restrict U = G.u.data();
  const T* __restrict V = G.v.data();
  const T* __restrict Wt = G.w.data();
  double sums[27] = {0};
  for (int b = 0; b < G.n; b += 256) {
    const int e = std::min(G.n, b + 256);
    T cost = 0, g0 = 0, g1 = 0, g2 = 0, g3 = 0, g4 = 0, g5 = 0;
    T h00 = 0, h10 = 0, h11 = 0, h20 = 0, h21 = 0, h22 = 0, h30 = 0, h31 = 0, h32 = 0, h33 = 0, h40 = 0, h41 = 0,
      h42 = 0, h44 = 0, h50 = 0, h51 = 0, h52 = 0, h53 = 0, h54 = 0, h55 = 0;
#pragma omp simd reduction(+ : cost, g0, g1, g2, g3, g4, g5, h00, h10, h11, h20, h21, h22, h30, h31, h32, h33, \
                           h40, h41, h42, h44, h50, h51, h52, h53, h54, h55)
    for (int k = b; k < e; ++k) {
      const T xc = r0 * X[k] + r1 * Y[k] + r2 * Z[k] + t0;
      const T yc = r3 * X[k] + r4 * Y[k] + r5 * Z[k] + t1;
      const T zc = r6 * X[k] + r7 * Y[k] + r8 * Z[k] + t2;
      const T wi = zc < min_depth ? T(0) : Wt[k];
      const T iz = T(1) / (zc < min_depth ? T(1) : zc);
      const T a = xc * iz, c = yc * iz;
      const T ru = fx * a - U[k];  // U = u - cx
      const T rv = fy * c - V[k];
      // u = fx a + cx: du/dx_cam = fu (1, 0, -a), dv/dx_cam = fv (0, 1, -c), d x_cam / dw = -[x_cam]x.
      const T fu = fx * iz, fv = fy * iz;
      const T u0 = -fu * a * yc, u1 = fu * (zc + a * xc), u2 = -fu * yc, u3 = fu, u5 = -fu * a;  // u4 = 0
      const T v0 = -fv * (zc + c * yc), v1 = fv * c * xc, v2 = fv * xc, v4 = fv, v5 = -fv * c;  // v3 = 0
      const T wru = wi * ru, wrv = wi * rv;
      cost += wru * ru + wrv * rv;
      g0 += u0 * wru + v0 * wrv;
      g1 += u1 * wru + v1 * wrv;
      g2 += u2 * wru + v2 * wrv;
      g3 += u3 * wru;
      g4 += v4 * wrv;
      g5 += u5 * wru + v5 * wrv;
      const T wu0 = wi * u0, wu1 = wi * u1, wu2 = wi * u2, wu3 = wi * u3, wu5 = wi * u5;
      const T wv0 = wi * v0, wv1 = wi * v1, wv2 = wi * v2, wv4 = wi * v4, wv5 = wi * v5;
      h00 += wu0 * u0 + wv0 * v0;
      h10 += wu1 * u0 + wv1 * v0;
      h11 += wu1 * u1 + wv1 * v1;
      h20 += wu2 * u0 + wv2 * v0;
      h21 += wu2 * u1 + wv2 * v1;
      h22 += wu2 * u2 + wv2 * v2;
      h30 += wu3 * u0;
      h31 += wu3 * u1;
      h32 += wu3 * u2;
      h33 += wu3 * u3;
      h40 += wv4 * v0;
      h41 += wv4 * v1;
      h42 += wv4 * v2;
      h44 += wv4 * v4;  // h43 = 0
      h50 += wu5 * u0 + wv5 * v0;
      h51 += wu5 * u1 + wv5 * v1;
      h52 += wu5 * u2 + wv5 * v2;
      h53 += wu5 * u3;
      h54 += wv5 * v4;
      h55 += wu5 * u5 + wv5 * v5;
    }
    const T block[27] = {cost, g0,  g1,  g2,  g3,  g4,  g5,  h00, h10, h11, h20, h21, h22, h30,
                         h31,  h32, h33, h40, h41, h42, h44, h50, h51, h52, h53, h54, h55};
    for (int q = 0; q < 27; ++q) sums[q] += block[q];
  }
  const double* h = sums + 7;
  const double lower[21] = {h[0], h[1], h[2],  h[3],  h[4],  h[5],  h[6],  h[7],  h[8],  h[9],  h[10],
                            h[11], h[12], 0.0, h[13], h[14], h[15], h[16], h[17], h[18], h[19]};
  int k = 0;
  for (int r = 0; r < 6; ++r)
    for (int c = 0; c <= r; ++c, ++k) H[6 * r + c] = H[6 * c + r] = lower[k];
  for (int r = 0; r < 6; ++r) g[r] = sums[1 + r];
  return sums[0];
}

// Quadratic (Gauss-Newton) model of the change of the cost sum r^2 along a step d: 2 g.d + d.H.d.
double model_change(const double* H, const double* g, const double* d) {
  double gd = 0.0, dHd = 0.0;
  for (int r = 0; r < 6; ++r) {
    gd += g[r] * d[r];
    for (int c = 0; c < 6; ++c) dHd += d[r] * H[6 * r + c] * d[c];
  }
  return 2.0 * gd + dHd;
}

// Levenberg-Marquardt on gathered correspondences (see refine_pnp_lm). `tol`: the relative cost
// change below which steps count as converged (1e-9 in float64; float32 sums carry ~1e-6 of
// rounding, and there a step that the model predicted to lower the cost and that measures no worse
// than `tol` is taken, since the measurement cannot tell).
template <class G>
int lm_run(const G& gathered, const Intrinsics& K, Pose& pose, int max_iterations, bool predict_stop, double tol) {
  if (gathered.n < 3 || max_iterations <= 0) return 0;
  const bool rounded = tol > 1e-9;
  double H[36], g[6], Hc[36], gc[6];
  double cost = pnp_normal_equations(gathered, K, pose, H, g);
  double lambda = 1e-4;
  bool model_held = false;  // the last accepted step lowered the cost as the quadratic model said
  int it = 0;
  for (; it < max_iterations; ++it) {
    double Hd[36], d[6], mg[6];
    for (int k = 0; k < 36; ++k) Hd[k] = H[k];
    for (int r = 0; r < 6; ++r) {
      Hd[7 * r] += lambda * H[7 * r] + 1e-12;
      mg[r] = -g[r];
    }
    if (!solve_spd(Hd, mg, d, 6)) {
      lambda *= 10.0;
      if (lambda > 1e8) break;
      continue;
    }
    double predicted = 0.0;  // decrease of the cost along d by the quadratic model
    if (predict_stop) {
      predicted = -model_change(H, g, d);
      if (predicted <= 2e-9 * cost) return it;
    }
    double dR[9];
    so3_exp(d, dR);
    Pose cand;
    matmul3(dR, pose.R, cand.R);
    matvec3(dR, pose.t, cand.t);
    for (int k = 0; k < 3; ++k) cand.t[k] += d[3 + k];
    if (predict_stop && model_held && predicted <= 1e-5 * cost) {
      // Converging as the model predicts, and this step changes the cost by at most 1e-5 of it
      // (the pose by a few 1e-4 of the last step): take it without the pass over the points that
      // would confirm it (and find the next step ~1e-15 of the cost). Saves one of three passes
      // in a typical test-mode refinement.
      pose = cand;
      return it + 1;
    }
    const double c = pnp_normal_equations(gathered, K, cand, Hc, gc);
    if (rounded && predicted > 0.0 && !(c < cost) && c - cost <= tol * cost) {
      pose = cand;
      return it + 1;
    }
    if (c < cost) {
      const double decrease = cost - c;
      model_held = predict_stop && std::fabs(decrease - predicted) <= 0.2 * predicted;
      pose = cand;
      cost = c;
      std::copy(Hc, Hc + 36, H);
      std::copy(gc, gc + 6, g);
      lambda = std::fmax(lambda * 0.1, 1e-10);
      // Converged: the cost barely moved, or the step is far below any meaningful pose change.
      const double step = std::sqrt(dot3(d, d) + dot3(d + 3, d + 3));
      if (decrease <= tol * cost || step < 1e-10) return it + 1;
    } else {
      // At the optimum rounding makes every step "worse" by a negligible amount: stop there.
      if (c - cost <= tol * cost) return it + 1;
      lambda *= 10.0;
      if (lambda > 1e8) break;
    }
  }
  return it;
}

}  // namespace

int refine_pnp_lm(const Frame& f, const int* idx, int n, Pose& pose, int max_iterations, bool predict_stop) {
  if (n < 3 || max_iterations <= 0) return 0;
  Gathered G;
  G.assign(f, idx, n);
  return lm_run(G, f.K, pose, max_iterations, predict_stop, kTolerance64);
}

int refine_robust_pnp(const Frame& f, const ScoreParams& sp, double scale, int rounds, int lm_iterations,
                      Pose& pose) {
  if (!(scale > 0) || rounds <= 0 || f.n < 4) return 0;
  Buffer<double> err(static_cast<size_t>(f.n));
  Buffer<int> idx(static_cast<size_t>(f.n));
  Gathered G;
  int n = 0;
  for (int round = 0; round < rounds; ++round) {
    reprojection_errors(f, pose, sp, err.data());
    n = 0;
    for (int i = 0; i < f.n; ++i)
      if (err[i] < sp.tau) idx[n++] = i;
    if (n < 4) return 0;
    G.assign(f, idx.data(), n);
    const double inv = 1.0 / scale;
    for (int k = 0; k < n; ++k) {
      const double e = err[idx[k]] * inv;
      G.w[k] = 1.0 / (1.0 + e * e);  // Cauchy: the weight of the loss log(1 + (e / scale)^2) at this error
    }
    const Pose before = pose;
    lm_run(G, f.K, pose, lm_iterations, false, kTolerance64);
    double change = 0.0;
    for (int k = 0; k < 9; ++k) change = std::fmax(change, std::fabs(pose.R[k] - before.R[k]));
    for (int k = 0; k < 3; ++k) change = std::fmax(change, std::fabs(pose.t[k] - before.t[k]));
    if (change < 1e-9) break;  // the weights would not change any more
  }
  return n;
}

namespace {

// The DSAC* loop of refine_hypothesis; with `scored` non-null the test-mode variant of
// refine_hypothesis_scored, scored[0] / scored[1] being `before` / `after`.
int refine_loop(const Frame& f, Model model, const ScoreParams& sp, int max_rounds, int lm_iterations, Pose& pose,
                Buffer<int>& scratch, ScoreOut* scored, const PackedCells* packed = nullptr) {
  Gathered32 inliers32;
  scratch.resize(static_cast<size_t>(f.n));
  const int min_points = model == Model::kPnP ? 4 : 3;
  int previous = 0, fitted = 0;
  bool listed = false;  // scratch and scored[1] describe `pose`
  for (int round = 0; round < max_rounds; ++round) {
    int count;
    if (scored) {
      scored[1] = soft_score_collect(f, pose, sp, scratch.data());
      if (round == 0) scored[0] = scored[1];
      count = scored[1].inliers;
      listed = true;
    } else {
      count = collect_inliers(f, pose, sp, scratch.data());
    }
    if (count < min_points || count <= previous) break;
    previous = count;
    if (model == Model::kPnP && packed) {
      inliers32.assign(*packed, scratch.data(), count);
      lm_run(inliers32, f.K, pose, lm_iterations, true, kTolerance32);
    } else if (model == Model::kPnP) {
      refine_pnp_lm(f, scratch.data(), count, pose, lm_iterations, scored != nullptr);
    } else {
      Pose fit;
      if (!rigid_align_indexed(f.points.data(), f.camera.data(), f.w.data(), scratch.data(), count, fit)) break;
      pose = fit;
    }
    fitted = count;
    listed = false;
  }
  if (scored && !listed) {
    scored[1] = soft_score_collect(f, pose, sp, scratch.data());
    if (max_rounds <= 0) scored[0] = scored[1];
  }
  return fitted;
}

}  // namespace

int refine_hypothesis(const Frame& f, Model model, const ScoreParams& sp, int max_rounds, int lm_iterations,
                      Pose& pose, Buffer<int>& scratch) {
  return refine_loop(f, model, sp, max_rounds, lm_iterations, pose, scratch, nullptr);
}

void refine_hypothesis_scored(const Frame& f, Model model, const ScoreParams& sp, int max_rounds, int lm_iterations,
                              Pose& pose, Buffer<int>& scratch, ScoreOut& before, ScoreOut& after,
                              const PackedCells* packed) {
  ScoreOut scored[2];
  refine_loop(f, model, sp, max_rounds, lm_iterations, pose, scratch, scored, packed);
  before = scored[0];
  after = scored[1];
}

}  // namespace transpose
