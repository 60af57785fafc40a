// Reprojection errors and the DSAC* soft inlier score.
//
// Per correspondence: err = min(|project(R X + t) - pixel|, max_err), and err = max_err when the
// point lies behind the camera. Soft score = sum_i w_i (1 - sigmoid(beta (err_i - tau))) with
// beta = 5 / tau; terms below 1e-15 w_i (err beyond tau + 36 / beta) are skipped. A hard inlier is
// err < tau.
#pragma once

#include "camera.h"
#include "frame.h"

namespace transpose {

struct ScoreParams {
  double tau = 10.0;       // inlier threshold (px)
  double beta = 0.5;       // sigmoid sharpness, 5 / tau
  double max_err = 100.0;  // errors are clamped here (px)
  double cut = 82.0;       // err beyond which a term is negligible
  double cmax = 1.0;       // largest possible term per unit weight (err = 0)
};

ScoreParams make_score_params(double tau, double max_err);

// Reprojection error of valid correspondence i (clamped to max_err).
double reprojection_error(const Frame& f, const Pose& pose, int i, const ScoreParams& sp);

struct ScoreOut {
  double score = 0.0;    // soft inlier score (partial when !complete)
  int inliers = 0;       // hard inliers (partial when !complete)
  bool complete = true;  // false when scoring stopped early
};

// Soft inlier score of a pose. Stops early (complete = false) once even a perfect remainder could
// not reach `stop_below`; pass -infinity (or 0) to always score every correspondence.
ScoreOut soft_score(const Frame& f, const Pose& pose, const ScoreParams& sp, double stop_below);

// Valid indices with err < tau into `out` (room for f.n); returns their number.
int collect_inliers(const Frame& f, const Pose& pose, const ScoreParams& sp, int* out);

// soft_score (every correspondence) and collect_inliers in one pass: the score and the number of
// inliers, whose valid indices go to `out` (room for f.n).
ScoreOut soft_score_collect(const Frame& f, const Pose& pose, const ScoreParams& sp, int* out);

// Clamped reprojection errors of every valid correspondence into `out` (f.n values).
void reprojection_errors(const Frame& f, const Pose& pose, const ScoreParams& sp, double* out);

}  // namespace transpose
