// DSAC*-style RANSAC over a minimal-solver estimator (PnP from 2D-3D cells, or rigid 3D-3D for
// RGB-D), with a fixed-count mode (DSAC*: M hypotheses, each from 4 cells where 3 solve and the
// 4th must agree) and an adaptive mode (draw until a confidence is reached).
//
// Determinism: hypothesis h (fixed mode) or draw d (adaptive mode) uses its own random stream
// Rng(seed, h), and the winner is the highest score with ties to the lowest index, so a seed gives
// the same pose for any thread count. The adaptive stopping rule is checked only between fixed
// blocks of draws for the same reason.
#pragma once

#include <cstdint>
#include <vector>

#include "camera.h"
#include "frame.h"
#include "refine.h"
#include "scoring.h"

namespace transpose {

struct RansacOptions {
  int num_hypotheses = 64;         // fixed mode: hypotheses drawn (DSAC*: 64)
  double threshold = 10.0;         // tau, inlier threshold in px
  double alpha = 100.0;            // score scale: logits = alpha * soft_score / sum(w)
  double max_reprojection_error = 100.0;
  int max_tries_per_hypothesis = 1000000 / 64;  // fixed mode: samples one hypothesis may use
  bool adaptive = false;
  double confidence = 0.999;       // adaptive: stop when P(an all-inlier sample was drawn) >= this
  int max_iterations = 100000;     // adaptive: cap on minimal samples drawn
  int min_iterations = 0;          // adaptive: draw at least this many samples
  bool early_exit = true;          // stop scoring hypotheses that cannot beat the best (test mode)
  // Test mode scores hypotheses in float32 (fast_score.h), and the fixed count preemptively: every
  // hypothesis on `preemptive_cells` random cells (0: all cells), the best `preemptive_keep` on 4x
  // as many, the best half of those on all cells; the argmax of those full scores wins. Reported
  // scores stay float64; the refinement's LM sums its normal equations in float32 (refine.h).
  // exact_scoring: float64 on every cell and a float64 LM run to confirmed convergence, the
  // behaviour before the float32 path (and always that of training, where all scores are used).
  bool exact_scoring = false;
  int preemptive_cells = 256;
  int preemptive_keep = 8;
  bool refine = true;              // refine the winner (test mode) / the selected hypothesis
  int refine_rounds = 100;         // inlier re-collection rounds
  int lm_iterations = 10;          // LM iterations per round
  // Test mode, PnP: after the refinement, re-fit robustly (refine_robust_pnp): Cauchy loss of
  // scale `robust_scale` px over the inliers, `robust_rounds` reweightings. 0: off (DSAC*).
  double robust_scale = 0.0;
  int robust_rounds = 4;
  bool training = false;           // score all, sample the winner from softmax(logits), return all
  bool refine_all = false;         // training: also refine every hypothesis
  uint64_t seed = 0;
  int num_threads = 0;             // threads over hypotheses (single frame); <= 0: automatic (one
                                   // thread unless hypotheses x cells >= 2^21, fixed mode only)
};

struct RansacResult {
  int status = kOk;
  Pose pose;                  // final (refined) pose, world-to-camera
  double score = 0.0;         // soft inlier score of the final pose
  int num_inliers = 0;        // err < tau under the final pose
  std::vector<uint8_t> inliers;  // (n_total,) mask in the caller's indexing
  int num_hypotheses = 0;     // hypotheses that passed the 4th-cell check and were scored
  int64_t num_samples = 0;    // minimal samples drawn
  int selected = -1;          // index of the chosen hypothesis
  double selected_score = 0.0;  // soft score of the chosen hypothesis before refinement
  // Training mode (fixed count): every hypothesis, in index order.
  std::vector<Pose> hypotheses;
  std::vector<double> logits;          // alpha * soft / sum(w); -inf for a hypothesis that failed
  std::vector<int> samples;            // (M, 4) caller indices of the cells (3 solve, 4th verifies)
  std::vector<Pose> refined;           // refine_all: refined hypotheses
};

int check_options(const RansacOptions& o);

class Rng;

// Building blocks of the loop, shared with training code:
// up to 4 candidate poses from the first 3 (valid) indices of a sample s (PnP: Lambda Twist P3P;
// rigid: Kabsch on the camera vs scene points); returns their number.
int generate_poses(const Frame& f, Model model, const int* s, Pose* out);
// One minimal sample: 4 distinct cells drawn from `rng` into s; of the poses from the first 3,
// the one whose worst reprojection error over all 4 is smallest is kept if that error is below
// tau (the DSAC* "4th cell must agree" rule). Returns false when no pose qualifies.
bool draw_hypothesis(const Frame& f, Model model, const ScoreParams& sp, Rng& rng, Pose& pose, int* s);
// draw_hypothesis in its two steps: the 4 distinct cells (n >= 4 valid ones), and the hypothesis
// from them. Between the two a loop can draw the next sample and prefetch_sample() it, so that
// its cells arrive from memory while this one is solved (the same draws, in the same order).
void draw_sample(Rng& rng, int n, int* s);
bool hypothesis_from_sample(const Frame& f, Model model, const ScoreParams& sp, const int* s, Pose& pose);
void prefetch_sample(const Frame& f, Model model, const int* s);

// Solve one frame. `model` picks PnP (pixels + scene points) or rigid (camera + scene points).
void ransac(const Frame& frame, Model model, const RansacOptions& options, RansacResult& result);

// Solve frames in parallel (one thread per frame, `num_threads` <= 0: all available); frame b
// uses seeds[b]. Each result equals ransac() on that frame alone with that seed.
void ransac_batch(const std::vector<Frame>& frames, const std::vector<int>& frame_status, Model model,
                  const RansacOptions& options, const std::vector<uint64_t>& seeds, int num_threads,
                  std::vector<RansacResult>& results);

// Resolve a thread request (<= 0: automatic) to a count >= 1.
int resolve_threads(int requested);

}  // namespace transpose
