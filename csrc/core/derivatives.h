// End-to-end training through differentiable RANSAC (DSAC*'s expected pose loss) and its gradient
// with respect to every scene coordinate.
//
// Forward, per hypothesis h (the same random streams as ransac() in training mode, so the same
// hypotheses, logits and refined poses): a minimal sample (P3P, or Kabsch for RGB-D) gives P_h;
// logit_h = alpha * soft_score(P_h) / sum(w); the DSAC* refinement gives P*_h, the optimum of the
// (weighted) reprojection / 3D alignment cost over its final inlier set S_h; l_h = pose_loss(P*_h).
// Expected loss E = sum_h p_h l_h with p = softmax(logits) over the hypotheses that exist.
//
// Backward (all analytic): dE/dx = sum_h [ p_h (l_h - E) dlogit_h/dx + p_h dl_h/dx ] with
//  - dlogit_h/dx: every cell's soft-inlier term directly, plus through P_h;
//  - P_h: implicit differentiation of the minimal problem (P3P: the 9 equations
//    exp(w) (R X_k + t) + dt = mu_k b_k in pose and depths; Kabsch: its optimality condition);
//  - P*_h: implicit differentiation at the refinement optimum with S_h held fixed, using the exact
//    Hessian of the cost (not the Gauss-Newton approximation), so it matches finite differences;
//    P*_h depends on P_h only through S_h, which is piecewise constant (no gradient).
// Hypotheses with p_h < min_probability are skipped in the backward pass (their contribution is
// bounded by p_h times the size of one hypothesis' gradient); set it to 0 for exact gradients.
// Poses are world-to-camera; pose derivatives use the left perturbation exp([w]x) (R, t) + (0, dt).
#pragma once

#include <cstdint>
#include <vector>

#include "camera.h"
#include "frame.h"
#include "ransac.h"
#include "refine.h"

namespace transpose {

struct PoseLossParams {
  double weight_rot = 1.0;      // per degree
  double weight_trans = 100.0;  // per metre
  double cut = 100.0;           // above: sqrt(cut * loss) (DSAC*'s soft clamp)
};

// DSAC*'s pose loss of a world-to-camera estimate against the ground truth: weight_rot * (angle
// between the rotations, degrees) + weight_trans * (distance of the camera centres, metres),
// square-root clamped above `cut`. grad (nullable): dloss / d(w, dt) of the estimate (6).
double pose_loss(const Pose& est, const Pose& gt, const PoseLossParams& params, double* grad);

struct DsacOptions {
  RansacOptions ransac;          // num_hypotheses, threshold, alpha, max_reprojection_error,
                                 // max_tries_per_hypothesis, refine_rounds, lm_iterations, seed
  PoseLossParams loss;
  double min_probability = 1e-6;  // backward skips hypotheses below this probability
  int polish_iterations = 2;      // extra LM calls on the final inlier set (a tighter optimum)
  bool gradient = true;           // compute the gradient (false: forward only)
  int num_threads = 1;            // threads over hypotheses (single frame)
};

struct DsacResult {
  int status = kOk;
  double loss = 0.0;                // expected loss
  std::vector<double> grad;         // (n_total, 3) dE / d scene point, caller indexing (0 for dropped)
  std::vector<double> logits;       // (M,) -inf for a hypothesis that failed
  std::vector<double> probabilities;  // (M,)
  std::vector<double> losses;       // (M,) pose loss of each refined hypothesis (0 for failed)
  std::vector<Pose> hypotheses;     // (M,) unrefined
  std::vector<Pose> refined;        // (M,)
  std::vector<int> samples;         // (M, 4) caller indices (-1 for failed)
  std::vector<int> inliers_used;    // (M,) size of the inlier set of the last fit (0: not refined)
  int backward_hypotheses = 0;      // hypotheses included in the backward pass
};

// Expected DSAC* loss of one frame (and its gradient when options.gradient).
void dsac_loss(const Frame& frame, Model model, const DsacOptions& options, const Pose& gt, DsacResult& result);

// Frames in parallel (one thread per frame); frame b uses seeds[b] and gts[b]. A single frame
// spreads its hypotheses over `num_threads` threads (<= 0: automatic, one unless the work is large).
void dsac_loss_batch(const std::vector<Frame>& frames, const std::vector<int>& frame_status, Model model,
                     const DsacOptions& options, const std::vector<Pose>& gts, const std::vector<uint64_t>& seeds,
                     int num_threads, std::vector<DsacResult>& results);

}  // namespace transpose
