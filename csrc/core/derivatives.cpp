#include "derivatives.h"

#include <algorithm>
#include <cmath>
#include <limits>

#if TRANSPOSE_HAVE_OPENMP
#include <omp.h>
#endif

#include "kabsch.h"
#include "math3.h"
#include "rng.h"
#include "scoring.h"

namespace transpose {
namespace {

constexpr double kRadToDeg = 57.29577951308232;

// Solve the n x n system A x = b (row-major, n <= 9) by Gaussian elimination with partial
// pivoting; A and b are overwritten. False when (numerically) singular.
bool solve_dense(double* A, double* b, int n) {
  double scale = 0.0;
  for (int i = 0; i < n * n; ++i) scale = std::fmax(scale, std::fabs(A[i]));
  if (!(scale > 0.0)) return false;
  for (int c = 0; c < n; ++c) {
    int piv = c;
    for (int r = c + 1; r < n; ++r)
      if (std::fabs(A[r * n + c]) > std::fabs(A[piv * n + c])) piv = r;
    if (!(std::fabs(A[piv * n + c]) > 1e-13 * scale)) return false;
    if (piv != c) {
      for (int k = 0; k < n; ++k) std::swap(A[c * n + k], A[piv * n + k]);
      std::swap(b[c], b[piv]);
    }
    for (int r = c + 1; r < n; ++r) {
      const double m = A[r * n + c] / A[c * n + c];
      if (m == 0.0) continue;
      for (int k = c; k < n; ++k) A[r * n + k] -= m * A[c * n + k];
      b[r] -= m * b[c];
    }
  }
  for (int r = n - 1; r >= 0; --r) {
    double s = b[r];
    for (int k = r + 1; k < n; ++k) s -= A[r * n + k] * b[k];
    b[r] = s / A[r * n + r];
  }
  return true;
}

// Per-correspondence pieces of the refinement cost 1/2 w |r|^2 at the camera point q = R X + t:
// lambda = d(1/2 |r|^2)/dq (3) and Lambda = its Jacobian d lambda / dq (3x3, symmetric).
// PnP: r = project(q) - pixel; RGB-D: r = q - camera point.
inline void cost_pieces(const Frame& f, Model model, int i, const double* q, double* lam, double* Lam) {
  if (model == Model::kRigid) {
    for (int k = 0; k < 3; ++k) lam[k] = q[k] - f.camera[3 * static_cast<size_t>(i) + k];
    for (int k = 0; k < 9; ++k) Lam[k] = (k % 4 == 0) ? 1.0 : 0.0;
    return;
  }
  const double fx = f.K.fx, fy = f.K.fy;
  const double iz = 1.0 / q[2], iz2 = iz * iz;
  const double r0 = fx * q[0] * iz + f.K.cx - f.u[i];
  const double r1 = fy * q[1] * iz + f.K.cy - f.v[i];
  // Pi = d project / dq = [[fx/z, 0, -fx x/z^2], [0, fy/z, -fy y/z^2]]
  const double p00 = fx * iz, p02 = -fx * q[0] * iz2, p11 = fy * iz, p12 = -fy * q[1] * iz2;
  lam[0] = p00 * r0;
  lam[1] = p11 * r1;
  lam[2] = p02 * r0 + p12 * r1;
  // Lambda = Pi^T Pi + r0 d2(pi0) + r1 d2(pi1); d2(pi0): (0,2) = -fx/z^2, (2,2) = 2 fx x / z^3.
  Lam[0] = p00 * p00;
  Lam[1] = 0.0;
  Lam[2] = p00 * p02 - r0 * fx * iz2;
  Lam[4] = p11 * p11;
  Lam[5] = p11 * p12 - r1 * fy * iz2;
  Lam[8] = p02 * p02 + p12 * p12 + 2.0 * iz2 * iz * (r0 * fx * q[0] + r1 * fy * q[1]);
  Lam[3] = Lam[1];
  Lam[6] = Lam[2];
  Lam[7] = Lam[5];
}

// Exact Hessian (6x6) in the left perturbation (w, dt) of sum_k 1/2 w_k |r_k|^2 over idx[0..n).
// unit_weights: every w_k = 1 (the unweighted minimal Kabsch fit).
// g (nullable): the gradient (6) of the same cost.
void cost_hessian(const Frame& f, Model model, const Pose& P, const int* idx, int n, bool unit_weights, double* H,
                  double* g = nullptr) {
  for (int k = 0; k < 36; ++k) H[k] = 0.0;
  if (g)
    for (int k = 0; k < 6; ++k) g[k] = 0.0;
  for (int s = 0; s < n; ++s) {
    const int i = idx[s];
    const double X[3] = {f.X[i], f.Y[i], f.Z[i]};
    double q[3], lam[3], Lam[9];
    matvec3(P.R, X, q);
    for (int k = 0; k < 3; ++k) q[k] += P.t[k];
    cost_pieces(f, model, i, q, lam, Lam);
    const double w = unit_weights ? 1.0 : f.w[i];
    // A = dq/d(w, dt) = [-[q]x, I] (3x6); M = Lambda A; H += w (A^T M + E), E in the ww block.
    double A[18];
    A[0] = 0.0;   A[1] = q[2];  A[2] = -q[1];
    A[6] = -q[2]; A[7] = 0.0;   A[8] = q[0];
    A[12] = q[1]; A[13] = -q[0]; A[14] = 0.0;
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 3; ++c) A[6 * r + 3 + c] = (r == c) ? 1.0 : 0.0;
    double M[18];
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 6; ++c) M[6 * r + c] = Lam[3 * r] * A[c] + Lam[3 * r + 1] * A[6 + c] + Lam[3 * r + 2] * A[12 + c];
    if (g) {  // A^T lambda = (q x lambda, lambda)
      double ql[3];
      cross3(q, lam, ql);
      for (int k = 0; k < 3; ++k) {
        g[k] += w * ql[k];
        g[3 + k] += w * lam[k];
      }
    }
    const double lq = dot3(lam, q);
    for (int a = 0; a < 6; ++a)
      for (int b = 0; b <= a; ++b) {
        double v = A[a] * M[b] + A[6 + a] * M[6 + b] + A[12 + a] * M[12 + b];
        if (a < 3 && b < 3) v += 0.5 * (lam[a] * q[b] + lam[b] * q[a]) - (a == b ? lq : 0.0);
        H[6 * a + b] += w * v;
      }
  }
  for (int a = 0; a < 6; ++a)
    for (int b = 0; b < a; ++b) H[6 * b + a] = H[6 * a + b];
}

// Implicit differentiation at the optimum of the cost over idx: given g = dObj/d(pose) (6),
// add dObj/dX_k = -w_k R^T (lambda x v_w + Lambda (v_t + v_w x q)) with v = H^-1 g to grad
// (valid-cell indexing, (n, 3)). False when the Hessian is not positive definite.
bool backprop_optimum(const Frame& f, Model model, const Pose& P, const int* idx, int n, bool unit_weights,
                      const double* g, double* grad) {
  double H[36], v[6];
  cost_hessian(f, model, P, idx, n, unit_weights, H);
  if (!solve_spd(H, g, v, 6)) return false;
  for (int s = 0; s < n; ++s) {
    const int i = idx[s];
    const double X[3] = {f.X[i], f.Y[i], f.Z[i]};
    double q[3], lam[3], Lam[9];
    matvec3(P.R, X, q);
    for (int k = 0; k < 3; ++k) q[k] += P.t[k];
    cost_pieces(f, model, i, q, lam, Lam);
    const double w = unit_weights ? 1.0 : f.w[i];
    double a[3], b[3], c[3];
    cross3(lam, v, a);       // lambda x v_w
    cross3(v, q, b);         // v_w x q
    for (int k = 0; k < 3; ++k) b[k] += v[3 + k];
    matvec3(Lam, b, c);
    for (int k = 0; k < 3; ++k) a[k] += c[k];
    // R^T a
    for (int k = 0; k < 3; ++k)
      grad[3 * static_cast<size_t>(i) + k] -= w * (P.R[k] * a[0] + P.R[3 + k] * a[1] + P.R[6 + k] * a[2]);
  }
  return true;
}

// P3P backward: the pose solves exp(w) (R X_k + t) + dt - mu_k b_k = 0 (k < 3, b_k unit bearings).
// Given u = dObj/d(pose) (6), add dObj/dX_k to grad for the 3 solving cells.
bool backprop_p3p(const Frame& f, const Pose& P, const int* s, const double* u, double* grad) {
  double M[81] = {0};  // rows: equations (3k + m); columns: (w, dt, mu_0..2)
  double qs[9];
  for (int k = 0; k < 3; ++k) {
    const int i = s[k];
    const double X[3] = {f.X[i], f.Y[i], f.Z[i]};
    double* q = qs + 3 * k;
    matvec3(P.R, X, q);
    for (int m = 0; m < 3; ++m) q[m] += P.t[m];
    double b[3] = {(f.u[i] - f.K.cx) / f.K.fx, (f.v[i] - f.K.cy) / f.K.fy, 1.0};
    const double nb = norm3(b);
    for (int m = 0; m < 3; ++m) b[m] /= nb;
    // d/dw of exp(w) q = -[q]x
    const int r = 3 * k;
    M[9 * r + 1] = q[2];  M[9 * r + 2] = -q[1];
    M[9 * (r + 1) + 0] = -q[2]; M[9 * (r + 1) + 2] = q[0];
    M[9 * (r + 2) + 0] = q[1];  M[9 * (r + 2) + 1] = -q[0];
    for (int m = 0; m < 3; ++m) {
      M[9 * (r + m) + 3 + m] = 1.0;
      M[9 * (r + m) + 6 + k] = -b[m];
    }
  }
  // dz/dX_k = -M^-1 E_k R, so dObj/dX_k = -R^T (M^-T (u, 0))[3k..3k+3].
  double MT[81], y[9];
  for (int r = 0; r < 9; ++r)
    for (int c = 0; c < 9; ++c) MT[9 * r + c] = M[9 * c + r];
  for (int k = 0; k < 6; ++k) y[k] = u[k];
  y[6] = y[7] = y[8] = 0.0;
  if (!solve_dense(MT, y, 9)) return false;
  for (int k = 0; k < 3; ++k) {
    const double* a = y + 3 * k;
    for (int m = 0; m < 3; ++m)
      grad[3 * static_cast<size_t>(s[k]) + m] -= P.R[m] * a[0] + P.R[3 + m] * a[1] + P.R[6 + m] * a[2];
  }
  return true;
}

struct Hyp {
  Pose pose, refined;
  int sample[4] = {-1, -1, -1, -1};
  bool valid = false;
  double logit = -std::numeric_limits<double>::infinity();
  double loss = 0.0;
  double loss_grad[6] = {0, 0, 0, 0, 0, 0};
  std::vector<int> set;  // inlier set of the last fit (empty: not refined)
};

// DSAC* refinement (as refine_hypothesis) that keeps the inlier set of the last fit.
void refine_recording(const Frame& f, Model model, const ScoreParams& sp, const DsacOptions& o, Hyp& h) {
  Buffer<int> scratch(static_cast<size_t>(f.n));
  const int min_points = model == Model::kPnP ? 4 : 3;
  int previous = 0;
  Pose pose = h.pose;
  for (int round = 0; round < o.ransac.refine_rounds; ++round) {
    const int count = collect_inliers(f, pose, sp, scratch.data());
    if (count < min_points || count <= previous) break;
    previous = count;
    if (model == Model::kPnP) {
      refine_pnp_lm(f, scratch.data(), count, pose, o.ransac.lm_iterations);
    } else {
      Pose fit;
      if (!rigid_align_indexed(f.points.data(), f.camera.data(), f.w.data(), scratch.data(), count, fit)) break;
      pose = fit;
    }
    h.set.assign(scratch.begin(), scratch.begin() + count);
  }
  // LM accepts a step only when the cost drops, so it stops where rounding of the cost hides the
  // remaining slope (pose errors ~1e-10). The implicit gradient assumes the exact optimum, and
  // finite differences of the loss need a smooth optimum: a few Newton steps on the exact Hessian
  // and gradient (no cost comparison) get there. Only tiny steps are taken (a safeguard).
  if (model == Model::kPnP && h.set.size() >= 4)
    for (int k = 0; k < o.polish_iterations; ++k) {
      double H[36], g[6], d[6];
      cost_hessian(f, model, pose, h.set.data(), static_cast<int>(h.set.size()), false, H, g);
      for (double& x : g) x = -x;
      if (!solve_spd(H, g, d, 6)) break;
      if (!(std::sqrt(dot3(d, d) + dot3(d + 3, d + 3)) < 1e-4)) break;
      double dR[9], Rn[9], tn[3];
      so3_exp(d, dR);
      matmul3(dR, pose.R, Rn);
      matvec3(dR, pose.t, tn);
      std::copy(Rn, Rn + 9, pose.R);
      for (int m = 0; m < 3; ++m) pose.t[m] = tn[m] + d[3 + m];
    }
  h.refined = pose;
}

// dlogit/d(pose) of hypothesis pose P (6) into g6, and scale * dlogit/dX into grad (when grad).
void backprop_logit(const Frame& f, const ScoreParams& sp, const Pose& P, double logit_scale, double weight,
                    double* g6, double* grad) {
  for (int k = 0; k < 6; ++k) g6[k] = 0.0;
  const double cut2 = sp.cut * sp.cut;
  for (int i = 0; i < f.n; ++i) {
    const double X[3] = {f.X[i], f.Y[i], f.Z[i]};
    double q[3];
    matvec3(P.R, X, q);
    for (int k = 0; k < 3; ++k) q[k] += P.t[k];
    if (q[2] < kMinDepth) continue;  // scored as a constant
    const double iz = 1.0 / q[2];
    const double r0 = f.K.fx * q[0] * iz + f.K.cx - f.u[i];
    const double r1 = f.K.fy * q[1] * iz + f.K.cy - f.v[i];
    const double e2 = r0 * r0 + r1 * r1;
    if (!(e2 < cut2) || e2 <= 0.0) continue;  // beyond the cut the term is a constant
    const double e = std::sqrt(e2);
    const double s = 1.0 / (1.0 + std::exp(sp.beta * (e - sp.tau)));  // soft inlier term / w
    const double dsoft_de = -f.w[i] * sp.beta * s * (1.0 - s) * logit_scale;
    // de/dq = Pi^T r / e
    const double c = dsoft_de / e;
    double gq[3];
    gq[0] = c * f.K.fx * iz * r0;
    gq[1] = c * f.K.fy * iz * r1;
    gq[2] = -c * iz * iz * (f.K.fx * q[0] * r0 + f.K.fy * q[1] * r1);
    double qxg[3];
    cross3(q, gq, qxg);
    for (int k = 0; k < 3; ++k) {
      g6[k] += qxg[k];
      g6[3 + k] += gq[k];
    }
    if (grad)
      for (int k = 0; k < 3; ++k)
        grad[3 * static_cast<size_t>(i) + k] +=
            weight * (P.R[k] * gq[0] + P.R[3 + k] * gq[1] + P.R[6 + k] * gq[2]);
  }
}

}  // namespace

double pose_loss(const Pose& est, const Pose& gt, const PoseLossParams& params, double* grad) {
  // Rotation: angle of D = R R_gt^T (equal to the angle between the camera-to-world rotations).
  double RgT[9], D[9];
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) RgT[3 * r + c] = gt.R[3 * c + r];
  matmul3(est.R, RgT, D);
  const double cos_t = std::fmin(1.0, std::fmax(-1.0, 0.5 * (D[0] + D[4] + D[8] - 1.0)));
  const double theta = std::acos(cos_t);
  // Camera centres c = -R^T t.
  double c_est[3], c_gt[3];
  for (int k = 0; k < 3; ++k) {
    c_est[k] = -(est.R[k] * est.t[0] + est.R[3 + k] * est.t[1] + est.R[6 + k] * est.t[2]);
    c_gt[k] = -(gt.R[k] * gt.t[0] + gt.R[3 + k] * gt.t[1] + gt.R[6 + k] * gt.t[2]);
  }
  double dc[3];
  sub3(c_est, c_gt, dc);
  const double et = norm3(dc);
  const double raw = params.weight_rot * theta * kRadToDeg + params.weight_trans * et;
  double loss = raw, factor = 1.0;
  if (raw > params.cut) {
    loss = std::sqrt(params.cut * raw);
    factor = 0.5 * std::sqrt(params.cut / raw);
  }
  if (grad) {
    // d theta / dw = unit rotation axis of D; d et / d dt = -R (c - c_gt) / et; d et / dw = 0.
    const double a[3] = {0.5 * (D[7] - D[5]), 0.5 * (D[2] - D[6]), 0.5 * (D[3] - D[1])};
    const double na = norm3(a);
    for (int k = 0; k < 3; ++k) {
      grad[k] = na > 1e-15 ? factor * params.weight_rot * kRadToDeg * a[k] / na : 0.0;
      double rd = est.R[3 * k] * dc[0] + est.R[3 * k + 1] * dc[1] + est.R[3 * k + 2] * dc[2];
      grad[3 + k] = et > 1e-15 ? -factor * params.weight_trans * rd / et : 0.0;
    }
  }
  return loss;
}

void dsac_loss(const Frame& f, Model model, const DsacOptions& o, const Pose& gt, DsacResult& r) {
  r = DsacResult();
  r.status = check_options(o.ransac);
  if (r.status != kOk) return;
  if (f.n < 4) {
    r.status = kTooFewPoints;
    return;
  }
  const ScoreParams sp = make_score_params(o.ransac.threshold, o.ransac.max_reprojection_error);
  const int M = o.ransac.num_hypotheses;
  const int threads = std::max(1, o.num_threads);
  std::vector<Hyp> hyps(static_cast<size_t>(M));
  const double scale = o.ransac.alpha / f.wsum;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
  for (int h = 0; h < M; ++h) {
    Hyp& hy = hyps[static_cast<size_t>(h)];
    Rng rng(o.ransac.seed, static_cast<uint64_t>(h));
    for (int tries = 0; tries < o.ransac.max_tries_per_hypothesis && !hy.valid; ++tries)
      hy.valid = draw_hypothesis(f, model, sp, rng, hy.pose, hy.sample);
    if (!hy.valid) continue;
    hy.logit = scale * soft_score(f, hy.pose, sp, -std::numeric_limits<double>::infinity()).score;
    refine_recording(f, model, sp, o, hy);
    hy.loss = pose_loss(hy.refined, gt, o.loss, hy.loss_grad);
  }
  double top = -std::numeric_limits<double>::infinity();
  for (const Hyp& hy : hyps)
    if (hy.valid) top = std::fmax(top, hy.logit);
  if (!std::isfinite(top)) {
    r.status = kNoHypothesis;
    return;
  }
  r.logits.resize(static_cast<size_t>(M));
  r.probabilities.assign(static_cast<size_t>(M), 0.0);
  r.losses.assign(static_cast<size_t>(M), 0.0);
  r.hypotheses.resize(static_cast<size_t>(M));
  r.refined.resize(static_cast<size_t>(M));
  r.samples.assign(static_cast<size_t>(4 * M), -1);
  r.inliers_used.assign(static_cast<size_t>(M), 0);
  double total = 0.0;
  for (int h = 0; h < M; ++h) {
    const Hyp& hy = hyps[static_cast<size_t>(h)];
    r.logits[static_cast<size_t>(h)] = hy.logit;
    r.hypotheses[static_cast<size_t>(h)] = hy.pose;
    r.refined[static_cast<size_t>(h)] = hy.valid ? hy.refined : hy.pose;
    if (!hy.valid) continue;
    r.probabilities[static_cast<size_t>(h)] = std::exp(hy.logit - top);
    total += r.probabilities[static_cast<size_t>(h)];
    r.losses[static_cast<size_t>(h)] = hy.loss;
    r.inliers_used[static_cast<size_t>(h)] = static_cast<int>(hy.set.size());
    for (int k = 0; k < 4; ++k) r.samples[static_cast<size_t>(4 * h + k)] = f.original[hy.sample[k]];
  }
  double E = 0.0;
  for (int h = 0; h < M; ++h) {
    r.probabilities[static_cast<size_t>(h)] /= total;
    E += r.probabilities[static_cast<size_t>(h)] * r.losses[static_cast<size_t>(h)];
  }
  r.loss = E;
  if (!o.gradient) return;

  // Backward: per-thread gradient buffers over the valid cells, summed at the end.
  std::vector<int> active;
  for (int h = 0; h < M; ++h)
    if (hyps[static_cast<size_t>(h)].valid && r.probabilities[static_cast<size_t>(h)] >= o.min_probability &&
        r.probabilities[static_cast<size_t>(h)] > 0.0)
      active.push_back(h);
  r.backward_hypotheses = static_cast<int>(active.size());
  const size_t n3 = 3 * static_cast<size_t>(f.n);
  const int bthreads = std::max(1, std::min(threads, static_cast<int>(active.size())));
  std::vector<std::vector<double>> buffers(static_cast<size_t>(bthreads), std::vector<double>());
#pragma omp parallel num_threads(bthreads) if (bthreads > 1)
  {
    int tid = 0;
#if TRANSPOSE_HAVE_OPENMP
    tid = omp_get_thread_num();
#endif
    std::vector<double>& grad = buffers[static_cast<size_t>(tid)];
    grad.assign(n3, 0.0);
    // static: a thread count fixes which buffer sums which hypotheses, so results repeat bit for bit
#pragma omp for schedule(static, 1)
    for (int a = 0; a < static_cast<int>(active.size()); ++a) {
      const int h = active[static_cast<size_t>(a)];
      const Hyp& hy = hyps[static_cast<size_t>(h)];
      const double p = r.probabilities[static_cast<size_t>(h)];
      const double dlogit = p * (hy.loss - E);  // dE / dlogit_h
      double u[6];  // dE / d(unrefined pose)
      backprop_logit(f, sp, hy.pose, scale, dlogit, u, grad.data());
      for (int k = 0; k < 6; ++k) u[k] *= dlogit;
      double gl[6];
      for (int k = 0; k < 6; ++k) gl[k] = p * hy.loss_grad[k];
      bool through_refined = !hy.set.empty() &&
                             backprop_optimum(f, model, hy.refined, hy.set.data(), static_cast<int>(hy.set.size()),
                                              false, gl, grad.data());
      if (!through_refined)  // not refined (or a singular optimum): the loss sees the unrefined pose
        for (int k = 0; k < 6; ++k) u[k] += gl[k];
      if (model == Model::kPnP)
        backprop_p3p(f, hy.pose, hy.sample, u, grad.data());
      else
        backprop_optimum(f, model, hy.pose, hy.sample, 3, true, u, grad.data());
    }
  }
  r.grad.assign(3 * static_cast<size_t>(f.n_total), 0.0);
  for (const std::vector<double>& g : buffers) {
    if (g.empty()) continue;
    for (int i = 0; i < f.n; ++i)
      for (int k = 0; k < 3; ++k) r.grad[3 * static_cast<size_t>(f.original[i]) + k] += g[3 * static_cast<size_t>(i) + k];
  }
}

void dsac_loss_batch(const std::vector<Frame>& frames, const std::vector<int>& frame_status, Model model,
                     const DsacOptions& options, const std::vector<Pose>& gts, const std::vector<uint64_t>& seeds,
                     int num_threads, std::vector<DsacResult>& results) {
  const int B = static_cast<int>(frames.size());
  results.assign(static_cast<size_t>(B), DsacResult());
  const int threads = resolve_threads(num_threads);
  if (B == 1) {  // one frame: its hypotheses are the parallel unit
    if (frame_status[0] != kOk) {
      results[0].status = frame_status[0];
      return;
    }
    DsacOptions o = options;
    o.ransac.seed = seeds[0];
    // Automatic (as ransac()): one thread unless the work is large; for DSAC*'s 64 hypotheses on a
    // few thousand cells, fork/join on a busy machine costs more than a second core brings.
    const double work = static_cast<double>(options.ransac.num_hypotheses) * frames[0].n;
    o.num_threads = (num_threads > 0 || work >= static_cast<double>(1 << 21)) ? threads : 1;
    dsac_loss(frames[0], model, o, gts[0], results[0]);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
  for (int b = 0; b < B; ++b) {
    if (frame_status[static_cast<size_t>(b)] != kOk) {
      results[static_cast<size_t>(b)].status = frame_status[static_cast<size_t>(b)];
      continue;
    }
    DsacOptions o = options;
    o.ransac.seed = seeds[static_cast<size_t>(b)];
    o.num_threads = 1;
    dsac_loss(frames[static_cast<size_t>(b)], model, o, gts[static_cast<size_t>(b)], results[static_cast<size_t>(b)]);
  }
}

}  // namespace transpose
