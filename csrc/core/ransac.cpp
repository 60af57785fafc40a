#include "ransac.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#if TRANSPOSE_HAVE_OPENMP
#include <omp.h>
#endif

#include "fast_score.h"
#include "kabsch.h"
#include "math3.h"
#include "p3p.h"
#include "rng.h"
#include "scoring.h"

namespace transpose {
namespace {

constexpr uint64_t kSelectionStream = 0xFFFFFFFFFFFFULL;  // random stream of the softmax draw
constexpr double kParallelWork = 1 << 21;  // hypotheses x cells above which one frame uses all threads
constexpr int kAdaptiveBlock = 16;  // draws between two stopping checks (fixed: keeps results thread-independent)

// The P3P input of a sample's first 3 cells: bearings (pixel - principal point) / focal, 1 and
// scene points, (3, 3) row-major each.
void p3p_input(const Frame& f, const int* s, double* bearings, double* pts) {
  for (int k = 0; k < 3; ++k) {
    const int i = s[k];
    bearings[3 * k] = f.uc[i] / f.K.fx;  // uc = u - cx: the same double as (u - cx) / fx
    bearings[3 * k + 1] = f.vc[i] / f.K.fy;
    bearings[3 * k + 2] = 1.0;
    pts[3 * k] = f.X[i];
    pts[3 * k + 1] = f.Y[i];
    pts[3 * k + 2] = f.Z[i];
  }
}

}  // namespace

int generate_poses(const Frame& f, Model model, const int* s, Pose* out) {
  if (model == Model::kPnP) {
    double bearings[9], pts[9];
    p3p_input(f, s, bearings, pts);
    return p3p_lambda_twist(bearings, pts, out);
  }
  return rigid_align_indexed(f.points.data(), f.camera.data(), nullptr, s, 3, out[0]) ? 1 : 0;
}

void draw_sample(Rng& rng, int n, int* s) {
  const uint32_t m = static_cast<uint32_t>(n);
  s[0] = static_cast<int>(rng.below(m));
  do { s[1] = static_cast<int>(rng.below(m)); } while (s[1] == s[0]);
  do { s[2] = static_cast<int>(rng.below(m)); } while (s[2] == s[0] || s[2] == s[1]);
  do { s[3] = static_cast<int>(rng.below(m)); } while (s[3] == s[0] || s[3] == s[1] || s[3] == s[2]);
}

void prefetch_sample(const Frame& f, Model model, const int* s) {
#if defined(__GNUC__) || defined(__clang__)
  // A frame's arrays outgrow the L2 cache (and a cold call finds them in DRAM): a sample's 4
  // random cells cost ~20 cache misses, as much time as solving its P3P.
  for (int k = 0; k < 4; ++k) {
    const size_t i = static_cast<size_t>(s[k]);
    if (model == Model::kPnP) {
      __builtin_prefetch(f.uc.data() + i);
      __builtin_prefetch(f.vc.data() + i);
      __builtin_prefetch(f.X.data() + i);
      __builtin_prefetch(f.Y.data() + i);
      __builtin_prefetch(f.Z.data() + i);
    } else {
      __builtin_prefetch(f.points.data() + 3 * i);
      __builtin_prefetch(f.camera.data() + 3 * i);
    }
  }
#else
  (void)f; (void)model; (void)s;
#endif
}

namespace {

// Reprojection error of valid correspondence i for a camera-frame point p (max_err behind the
// camera), as reprojection_error() computes it from a pose.
double camera_point_error(const Frame& f, const double* p, int i, const ScoreParams& sp) {
  if (p[2] < kMinDepth) return sp.max_err;
  const double iz = 1.0 / p[2];
  const double du = f.K.fx * p[0] * iz - f.uc[i], dv = f.K.fy * p[1] * iz - f.vc[i];
  const double e = std::sqrt(du * du + dv * dv);
  return e < sp.max_err ? e : sp.max_err;
}

// A candidate whose unpolished 4th cell misses tau by more than this fraction of tau is dropped
// before its polish: unpolished depths are off by ~1e-12 relative, so the margin keeps every
// candidate that the exact test would keep.
constexpr double kPrecheckMargin = 1e-3;

// The candidates of a sample whose 4th cell passed the pre-test (pnp_hypothesis): polished,
// checked, duplicates dropped, and the one with the smallest worst error over the 4 cells kept if
// below tau. Out of line: only ~1 sample in 4 gets here, and its 4 poses are not set up otherwise.
bool solve_candidates(const Frame& f, const ScoreParams& sp, const P3PSetup& st, const int* s, const int* passed,
                      int npassed, Pose& pose) {
  Pose cands[4];
  int count = 0;
  double best_err = sp.tau;
  for (int k = 0; k < npassed; ++k) {
    Pose& cand = cands[count];
    if (!p3p_solution(st, passed[k], cand) || p3p_duplicate(st, cands, count, cand)) continue;
    ++count;
    double worst = reprojection_error(f, cand, s[3], sp);
    if (worst >= best_err) continue;
    for (int j = 0; j < 3 && worst < best_err; ++j) worst = fmax_inline(worst, reprojection_error(f, cand, s[j], sp));
    if (worst < best_err) {
      best_err = worst;
      pose = cand;
    }
  }
  return best_err < sp.tau;
}

// hypothesis_from_sample for PnP. Most samples fail (at 30 % outliers ~3 of 4), so each P3P
// candidate's 4th cell is tested first on the unpolished depths (p3p_camera_point), and only the
// candidates that pass get the Gauss-Newton polish, the rotation checks and the exact test of all
// 4 cells: the same hypotheses as solving every candidate in full, ~25 % less work per sample.
bool pnp_hypothesis(const Frame& f, const ScoreParams& sp, const int* s, Pose& pose) {
  double bearings[9], pts[9];
  p3p_input(f, s, bearings, pts);
  P3PSetup st;
  const int m = p3p_prepare(bearings, pts, st);
  const double X4[3] = {f.X[s[3]], f.Y[s[3]], f.Z[s[3]]};
  // The exact test below keeps a candidate only if its 4th cell is within tau (and among several,
  // the one with the smallest worst error): one whose unpolished 4th cell misses tau by more than
  // the margin cannot qualify.
  const double bound = sp.tau * (1.0 + kPrecheckMargin);
  int passed[4], npassed = 0;
  for (int c = 0; c < m; ++c) {
    double p4[3];
    p3p_camera_point(st, c, X4, p4);
    if (camera_point_error(f, p4, s[3], sp) < bound) passed[npassed++] = c;
  }
  return npassed > 0 && solve_candidates(f, sp, st, s, passed, npassed, pose);
}

}  // namespace

bool hypothesis_from_sample(const Frame& f, Model model, const ScoreParams& sp, const int* s, Pose& pose) {
  if (model == Model::kPnP) return pnp_hypothesis(f, sp, s, pose);
  Pose cand;
  if (generate_poses(f, model, s, &cand) == 0) return false;
  double worst = 0.0;
  for (int k = 0; k < 4 && worst < sp.tau; ++k) worst = fmax_inline(worst, reprojection_error(f, cand, s[k], sp));
  if (!(worst < sp.tau)) return false;
  pose = cand;
  return true;
}

bool draw_hypothesis(const Frame& f, Model model, const ScoreParams& sp, Rng& rng, Pose& pose, int* s) {
  draw_sample(rng, f.n, s);
  return hypothesis_from_sample(f, model, sp, s, pose);
}

namespace {

// Lock-free "best = max(best, value)".
void atomic_max(std::atomic<double>& best, double value) {
  double cur = best.load(std::memory_order_relaxed);
  while (value > cur && !best.compare_exchange_weak(cur, value, std::memory_order_relaxed)) {
  }
}

struct Hypothesis {
  Pose pose;
  int sample[4] = {-1, -1, -1, -1};
  double score = -std::numeric_limits<double>::infinity();
  int inliers = 0;
  int64_t tries = 0;
  bool valid = false;
  bool complete = false;
};

// Adaptive mode: samples needed so that an all-inlier 4-cell sample was drawn with probability
// `confidence`, given inlier ratio `ratio`.
double needed_samples(double ratio, double confidence) {
  const double p = std::pow(ratio, 4);
  if (p >= 1.0) return 1.0;
  if (p <= 0.0) return std::numeric_limits<double>::infinity();
  return std::log(1.0 - confidence) / std::log1p(-p);
}

// Refine the winner; report its pose, soft score and inliers. The test-mode float32 paths leave
// r.selected_score to this function: the winner's float64 score comes with its first inlier pass.
void finish(const Frame& f, Model model, const RansacOptions& o, const ScoreParams& sp, Pose pose,
            RansacResult& r, const PackedCells* packed = nullptr) {
  Buffer<int> scratch;
  int count;
  if (o.training || o.exact_scoring) {
    if (o.refine) refine_hypothesis(f, model, sp, o.refine_rounds, o.lm_iterations, pose, scratch);
    if (model == Model::kPnP && o.refine && o.robust_scale > 0.0)  // test mode only (check_options)
      refine_robust_pnp(f, sp, o.robust_scale, o.robust_rounds, o.lm_iterations, pose);
    r.score = soft_score(f, pose, sp, -std::numeric_limits<double>::infinity()).score;
    scratch.resize(static_cast<size_t>(f.n));
    count = collect_inliers(f, pose, sp, scratch.data());
  } else {
    ScoreOut before, after;
    refine_hypothesis_scored(f, model, sp, o.refine ? o.refine_rounds : 0, o.lm_iterations, pose, scratch, before,
                             after, packed);
    if (model == Model::kPnP && o.refine && o.robust_scale > 0.0 &&
        refine_robust_pnp(f, sp, o.robust_scale, o.robust_rounds, o.lm_iterations, pose) > 0)
      after = soft_score_collect(f, pose, sp, scratch.data());
    r.selected_score = before.score;
    r.score = after.score;
    count = after.inliers;
  }
  r.pose = pose;
  r.num_inliers = count;
  r.inliers.assign(static_cast<size_t>(f.n_total), 0);
  for (int k = 0; k < count; ++k) r.inliers[static_cast<size_t>(f.original[scratch[k]])] = 1;
}

// Fixed mode, hypothesis h: its own random stream, at most max_tries_per_hypothesis samples.
// Each sample's successor is drawn (and its cells prefetched) before the sample is solved.
void draw_fixed(const Frame& f, Model model, const RansacOptions& o, const ScoreParams& sp, int h, Hypothesis& hy) {
  Rng rng(o.seed, static_cast<uint64_t>(h));
  int next[4];
  draw_sample(rng, f.n, next);
  while (hy.tries < o.max_tries_per_hypothesis) {
    ++hy.tries;
    std::copy(next, next + 4, hy.sample);
    draw_sample(rng, f.n, next);
    prefetch_sample(f, model, next);
    if (hypothesis_from_sample(f, model, sp, hy.sample, hy.pose)) {
      hy.valid = true;
      return;
    }
  }
}

// Preemptive scoring (test mode, fixed count) after its first stage, where every valid hypothesis
// got its score on the first preemptive_cells cells of the random subset: the best
// preemptive_keep of them add the rest of the subset (4x as many cells in all), and the best half
// of those are scored on every cell, with early exit against the best complete score; the others
// stay incomplete. Ties go to the lower index. The finalists held the argmax of the full float64
// score in all of 500 synthetic frames at 30-90 % outliers (tests/test_ransac_fast.py checks it).
void preemptive_stages(const Frame& f, const RansacOptions& o, const ScoreParams& sp, const PackedFrame& pk,
                       std::vector<Hypothesis>& hyps) {
  std::vector<int> order;
  for (int h = 0; h < static_cast<int>(hyps.size()); ++h)
    if (hyps[static_cast<size_t>(h)].valid) order.push_back(h);
  const auto better = [&](int a, int b) {
    const double sa = hyps[static_cast<size_t>(a)].score, sb = hyps[static_cast<size_t>(b)].score;
    return sa > sb || (sa == sb && a < b);
  };
  const size_t keep = std::min(order.size(), static_cast<size_t>(o.preemptive_keep));
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), better);
  const double inf = std::numeric_limits<double>::infinity();
  for (size_t k = 0; k < keep; ++k) {
    Hypothesis& hy = hyps[static_cast<size_t>(order[k])];
    hy.score += soft_score_packed(pk.subset, f.K, hy.pose, sp, o.preemptive_cells, pk.subset.n, -inf).score;
  }
  const size_t finalists = std::max<size_t>(std::min<size_t>(keep, 1), keep / 2);
  std::partial_sort(order.begin(), order.begin() + finalists, order.begin() + keep, better);
  double best = -inf;
  for (size_t k = 0; k < finalists; ++k) {
    Hypothesis& hy = hyps[static_cast<size_t>(order[k])];
    const ScoreOut so = soft_score_packed(pk.all, f.K, hy.pose, sp, 0, pk.all.n, o.early_exit ? best : -inf);
    hy.score = so.score;
    hy.inliers = so.inliers;
    hy.complete = so.complete;
    if (so.complete) best = std::fmax(best, so.score);
  }
}

void ransac_fixed(const Frame& f, Model model, const RansacOptions& o, const ScoreParams& sp, int threads,
                  RansacResult& r) {
  const int M = o.num_hypotheses;
  std::vector<Hypothesis> hyps(static_cast<size_t>(M));
  const bool exact = o.training || o.exact_scoring;
  const bool preempt = !exact && o.preemptive_cells > 0 && o.preemptive_cells < f.n;
  PackedFrame pk;
  if (!exact) {
    const int subset = preempt ? static_cast<int>(std::min<int64_t>(4LL * o.preemptive_cells, f.n)) : 0;
    pack_frame(f, subset, o.seed, pk);
  }
  const bool exit_early = o.early_exit && !o.training;
  std::atomic<double> best{-std::numeric_limits<double>::infinity()};
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
  for (int h = 0; h < M; ++h) {
    Hypothesis& hy = hyps[static_cast<size_t>(h)];
    draw_fixed(f, model, o, sp, h, hy);
    if (h + 1 < M) {  // the next hypothesis's first sample loads while this one is scored
      Rng next_rng(o.seed, static_cast<uint64_t>(h + 1));
      int next[4];
      draw_sample(next_rng, f.n, next);
      prefetch_sample(f, model, next);
    }
    if (!hy.valid) continue;
    if (preempt) {
      hy.score = soft_score_packed(pk.subset, f.K, hy.pose, sp, 0, o.preemptive_cells,
                                   -std::numeric_limits<double>::infinity()).score;
      continue;
    }
    const double stop = exit_early ? best.load(std::memory_order_relaxed) : -std::numeric_limits<double>::infinity();
    const ScoreOut so =
        exact ? soft_score(f, hy.pose, sp, stop) : soft_score_packed(pk.all, f.K, hy.pose, sp, 0, f.n, stop);
    hy.score = so.score;
    hy.inliers = so.inliers;
    hy.complete = so.complete;
    if (so.complete) atomic_max(best, so.score);
  }
  if (preempt) preemptive_stages(f, o, sp, pk, hyps);
  int chosen = -1;
  for (int h = 0; h < M; ++h) {
    const Hypothesis& hy = hyps[static_cast<size_t>(h)];
    r.num_samples += hy.tries;
    if (!hy.valid) continue;
    ++r.num_hypotheses;
    if (hy.complete && (chosen < 0 || hy.score > hyps[static_cast<size_t>(chosen)].score)) chosen = h;
  }
  if (chosen < 0) {
    r.status = kNoHypothesis;
    return;
  }
  if (o.training) {
    // Softmax over logits = alpha * soft / sum(w); the winner is drawn, not the argmax.
    const double scale = o.alpha / f.wsum;
    r.hypotheses.resize(static_cast<size_t>(M));
    r.logits.assign(static_cast<size_t>(M), -std::numeric_limits<double>::infinity());
    r.samples.assign(static_cast<size_t>(4 * M), -1);
    double top = -std::numeric_limits<double>::infinity();
    for (int h = 0; h < M; ++h) {
      const Hypothesis& hy = hyps[static_cast<size_t>(h)];
      r.hypotheses[static_cast<size_t>(h)] = hy.pose;
      if (!hy.valid) continue;
      r.logits[static_cast<size_t>(h)] = scale * hy.score;
      for (int k = 0; k < 4; ++k) r.samples[static_cast<size_t>(4 * h + k)] = f.original[hy.sample[k]];
      top = std::fmax(top, r.logits[static_cast<size_t>(h)]);
    }
    double total = 0.0;
    std::vector<double> p(static_cast<size_t>(M), 0.0);
    for (int h = 0; h < M; ++h) {
      if (!hyps[static_cast<size_t>(h)].valid) continue;
      p[static_cast<size_t>(h)] = std::exp(r.logits[static_cast<size_t>(h)] - top);
      total += p[static_cast<size_t>(h)];
    }
    Rng rng(o.seed, kSelectionStream);
    double x = rng.uniform() * total;
    chosen = -1;
    for (int h = 0; h < M; ++h) {
      if (!hyps[static_cast<size_t>(h)].valid) continue;
      chosen = h;
      x -= p[static_cast<size_t>(h)];
      if (x < 0.0) break;
    }
    if (o.refine_all) {
      r.refined.resize(static_cast<size_t>(M));
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
      for (int h = 0; h < M; ++h) {
        Pose pose = hyps[static_cast<size_t>(h)].pose;
        if (hyps[static_cast<size_t>(h)].valid) {
          Buffer<int> scratch;
          refine_hypothesis(f, model, sp, o.refine_rounds, o.lm_iterations, pose, scratch);
        }
        r.refined[static_cast<size_t>(h)] = pose;
      }
    }
  }
  r.selected = chosen;
  r.selected_score = hyps[static_cast<size_t>(chosen)].score;  // float32 path: replaced in finish()
  if (o.training && o.refine_all && o.refine) {
    RansacOptions o2 = o;
    o2.refine = false;  // already refined above
    finish(f, model, o2, sp, r.refined[static_cast<size_t>(chosen)], r);
  } else {
    finish(f, model, o, sp, hyps[static_cast<size_t>(chosen)].pose, r, exact ? nullptr : &pk.all);
  }
}

void ransac_adaptive(const Frame& f, Model model, const RansacOptions& o, const ScoreParams& sp, int threads,
                     RansacResult& r) {
  std::vector<Hypothesis> block(static_cast<size_t>(kAdaptiveBlock));
  Hypothesis best_h;
  std::atomic<double> best{-std::numeric_limits<double>::infinity()};
  double needed = std::numeric_limits<double>::infinity();
  int64_t drawn = 0;
  int selected = -1;
  PackedFrame pk;
  if (!o.exact_scoring) pack_frame(f, 0, o.seed, pk);
  while (drawn < o.max_iterations && (drawn < o.min_iterations || static_cast<double>(drawn) < needed)) {
    const int count = static_cast<int>(std::min<int64_t>(kAdaptiveBlock, o.max_iterations - drawn));
    // Draw k uses the random stream drawn + k; its sample is in hy.sample.
    const auto sample_of = [&](int k) {
      Rng rng(o.seed, static_cast<uint64_t>(drawn + k));
      draw_sample(rng, f.n, block[static_cast<size_t>(k)].sample);
    };
    auto one_draw = [&](int k) {
      Hypothesis& hy = block[static_cast<size_t>(k)];
      hy.valid = false;
      hy.complete = false;
      if (!hypothesis_from_sample(f, model, sp, hy.sample, hy.pose)) return;
      hy.valid = true;
      const double stop = o.early_exit ? best.load(std::memory_order_relaxed) : -std::numeric_limits<double>::infinity();
      const ScoreOut so = o.exact_scoring ? soft_score(f, hy.pose, sp, stop)
                                          : soft_score_packed(pk.all, f.K, hy.pose, sp, 0, f.n, stop);
      hy.score = so.score;
      hy.inliers = so.inliers;
      hy.complete = so.complete;
      if (so.complete) atomic_max(best, so.score);
    };
    if (threads > 1) {
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads)
      for (int k = 0; k < count; ++k) {
        sample_of(k);
        one_draw(k);
      }
    } else {
      // No OpenMP region (most draws cost ~1 us); each draw's successor is sampled and prefetched
      // before it is solved.
      sample_of(0);
      for (int k = 0; k < count; ++k) {
        if (k + 1 < count) {
          sample_of(k + 1);
          prefetch_sample(f, model, block[static_cast<size_t>(k + 1)].sample);
        }
        one_draw(k);
      }
    }
    for (int k = 0; k < count; ++k) {
      const Hypothesis& hy = block[static_cast<size_t>(k)];
      if (!hy.valid) continue;
      ++r.num_hypotheses;
      if (hy.complete && (selected < 0 || hy.score > best_h.score)) {
        best_h = hy;
        selected = static_cast<int>(drawn + k);
      }
    }
    drawn += count;
    if (selected >= 0) needed = needed_samples(static_cast<double>(best_h.inliers) / f.n, o.confidence);
  }
  r.num_samples = drawn;
  if (selected < 0) {
    r.status = kNoHypothesis;
    return;
  }
  r.selected = selected;
  r.selected_score = best_h.score;  // float32 path: replaced in finish()
  finish(f, model, o, sp, best_h.pose, r, o.exact_scoring ? nullptr : &pk.all);
}

}  // namespace

int resolve_threads(int requested) {
#if TRANSPOSE_HAVE_OPENMP
  if (requested <= 0) return omp_get_max_threads();
  return requested;
#else
  (void)requested;
  return 1;
#endif
}

int check_options(const RansacOptions& o) {
  if (!(o.num_hypotheses >= 1) || !(o.threshold > 0.0) || !std::isfinite(o.threshold) ||
      !(o.max_reprojection_error > 0.0) || !(o.alpha > 0.0) || !std::isfinite(o.alpha) ||
      !(o.max_tries_per_hypothesis >= 1) || !(o.confidence > 0.0 && o.confidence < 1.0) ||
      !(o.max_iterations >= 1) || !(o.min_iterations >= 0) || !(o.refine_rounds >= 0) ||
      !(o.lm_iterations >= 0) || !(o.preemptive_cells >= 0) || !(o.preemptive_keep >= 1) ||
      (o.training && o.adaptive) || !(o.robust_scale >= 0.0) || !std::isfinite(o.robust_scale) ||
      !(o.robust_rounds >= 0) || (o.training && o.robust_scale > 0.0))
    return kBadOptions;
  return kOk;
}

void ransac(const Frame& frame, Model model, const RansacOptions& options, RansacResult& result) {
  result = RansacResult();
  result.status = check_options(options);
  if (result.status != kOk) return;
  if (frame.n < (model == Model::kPnP ? 4 : 4)) {
    result.status = kTooFewPoints;
    return;
  }
  const ScoreParams sp = make_score_params(options.threshold, options.max_reprojection_error);
  // Automatic: one thread unless the fixed-count work is large. For DSAC*'s 64 hypotheses on a few
  // thousand cells, fork/join (and, on a busy machine, waiting for a descheduled thread) costs
  // more than a second core brings; batches parallelise over frames instead.
  int threads = resolve_threads(options.num_threads);
  if (options.num_threads <= 0) {
    const double work = static_cast<double>(options.num_hypotheses) * frame.n;
    threads = (!options.adaptive && work >= kParallelWork) ? threads : 1;
  }
  if (options.adaptive)
    ransac_adaptive(frame, model, options, sp, threads, result);
  else
    ransac_fixed(frame, model, options, sp, threads, result);
}

void ransac_batch(const std::vector<Frame>& frames, const std::vector<int>& frame_status, Model model,
                  const RansacOptions& options, const std::vector<uint64_t>& seeds, int num_threads,
                  std::vector<RansacResult>& results) {
  const int B = static_cast<int>(frames.size());
  results.assign(static_cast<size_t>(B), RansacResult());
  const int threads = resolve_threads(num_threads);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && B > 1)
  for (int b = 0; b < B; ++b) {
    if (frame_status[static_cast<size_t>(b)] != kOk) {
      results[static_cast<size_t>(b)].status = frame_status[static_cast<size_t>(b)];
      continue;
    }
    RansacOptions o = options;
    o.seed = seeds[static_cast<size_t>(b)];
    o.num_threads = 1;  // frames are the parallel unit
    ransac(frames[static_cast<size_t>(b)], model, o, results[static_cast<size_t>(b)]);
  }
}

}  // namespace transpose
