// Pose refinement: Levenberg-Marquardt on the reprojection error (PnP) or weighted rigid
// alignment (RGB-D), wrapped in the DSAC* loop that re-collects inliers until their count stops
// growing.
#pragma once

#include <vector>

#include "camera.h"
#include "fast_score.h"
#include "frame.h"
#include "scoring.h"

namespace transpose {

// Minimise sum_k w_k |project(R X_k + t) - pixel_k|^2 over the valid indices idx[0..n) with
// Levenberg-Marquardt (left-multiplied so(3) update). Returns the number of iterations done;
// the pose is only changed by steps that lower the cost. It stops once a step lowered the cost
// by at most 1e-9 of it; with `predict_stop` (test mode) also before a step whose predicted
// decrease (from the normal equations at hand) is that small, which saves the pass over the points
// that would only confirm convergence (the pose then differs by that last step, ~1e-9 relative),
// and right after a step it takes unconfirmed: one predicted to lower the cost by at most 1e-5 of
// it, after a step whose decrease the model had predicted within 20 %.
int refine_pnp_lm(const Frame& f, const int* idx, int n, Pose& pose, int max_iterations, bool predict_stop = false);

// Robust re-fit of a refined pose (iteratively reweighted least squares): `rounds` times, take
// the correspondences with err < tau under the current pose, weight each by the Cauchy factor
// 1 / (1 + (err / scale)^2) alone, and re-fit by LM. The caller's weights (e.g. 1/sigma^2) only
// decide which cells are in the frame: kept in this fit they cost the demo network 48.0 -> 38.7 %
// within 5 cm / 5 deg. A least-squares fit lets the few cells that are off by several pixels (a
// wrong cluster's neighbour, an occlusion border) pull the pose; the Cauchy loss bounds their pull.
// Returns the correspondences of the last fit (0: none).
int refine_robust_pnp(const Frame& f, const ScoreParams& sp, double scale, int rounds, int lm_iterations,
                      Pose& pose);

// Which model an estimator refines.
enum class Model { kPnP, kRigid };

// DSAC*-style refinement: repeat { inliers = {err < tau}; stop if they did not grow; re-fit on the
// inliers } at most `max_rounds` times. `scratch` is resized as needed. Returns the final number
// of inliers used for the last fit (0 when nothing was fitted).
int refine_hypothesis(const Frame& f, Model model, const ScoreParams& sp, int max_rounds, int lm_iterations,
                      Pose& pose, Buffer<int>& scratch);

// The same for test mode, which reports scores and inliers: LM with predict_stop, and inliers are
// collected together with the soft score (soft_score_collect). On return `before` holds the soft
// score and inlier count of the given pose, `after` those of the returned pose, whose inliers are
// listed in scratch[0..after.inliers). With max_rounds = 0 the pose is only scored. With `packed`
// (the frame's float32 cells, PnP) the LM sums its normal equations in float32, twice as fast; the
// pose then differs from the float64 fit by ~1e-8 relative. Scores and inliers stay float64.
void refine_hypothesis_scored(const Frame& f, Model model, const ScoreParams& sp, int max_rounds, int lm_iterations,
                              Pose& pose, Buffer<int>& scratch, ScoreOut& before, ScoreOut& after,
                              const PackedCells* packed = nullptr);

}  // namespace transpose
