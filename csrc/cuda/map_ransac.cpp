#include "map_ransac.h"

#include <limits>

#include "core/refine.h"
#include "core/rng.h"
#include "core/scoring.h"

namespace transpose {

template <typename T>
void frames_from_maps(const DenseMaps<T>& maps, const FrameIntrinsics* K, int num_threads, std::vector<Frame>& frames,
                      std::vector<int>& status) {
  const int B = maps.batch;
  const int64_t N = maps.cells();
  frames.assign(static_cast<size_t>(B), Frame());
  status.assign(static_cast<size_t>(B), kOk);
  const int threads = resolve_threads(num_threads);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && B > 1)
  for (int b = 0; b < B; ++b) {
    // (N, 2) pixels and (N, 3) points, as transpose.ransac hands a map to the core
    std::vector<double> pixels(static_cast<size_t>(2 * N)), points(static_cast<size_t>(3 * N));
    const T* c = maps.coords + 3 * N * b;
    for (int64_t i = 0; i < N; ++i) {
      const int row = static_cast<int>(i / maps.width), col = static_cast<int>(i % maps.width);
      pixels[2 * i] = cell::cell_centre(col, maps.stride);
      pixels[2 * i + 1] = cell::cell_centre(row, maps.stride);
      points[3 * i] = static_cast<double>(c[i]);
      points[3 * i + 1] = static_cast<double>(c[N + i]);
      points[3 * i + 2] = static_cast<double>(c[2 * N + i]);
    }
    Intrinsics in;
    in.fx = K[b].fx;
    in.fy = K[b].fy;
    in.cx = K[b].cx;
    in.cy = K[b].cy;
    status[static_cast<size_t>(b)] = build_frame(pixels.data(), points.data(), nullptr,
                                                 maps.weights ? maps.weights + N * b : nullptr, static_cast<int>(N),
                                                 in, frames[static_cast<size_t>(b)]);
  }
}

template void frames_from_maps<float>(const DenseMaps<float>&, const FrameIntrinsics*, int, std::vector<Frame>&,
                                      std::vector<int>&);
template void frames_from_maps<double>(const DenseMaps<double>&, const FrameIntrinsics*, int, std::vector<Frame>&,
                                       std::vector<int>&);

namespace {

// The winner's refinement and final statistics: the core's `finish` (ransac.cpp), PnP only.
void finish(const Frame& f, const RansacOptions& o, const ScoreParams& sp, Pose pose, RansacResult& r) {
  Buffer<int> scratch;
  if (o.refine) refine_hypothesis(f, Model::kPnP, sp, o.refine_rounds, o.lm_iterations, pose, scratch);
  if (o.refine && o.robust_scale > 0.0) refine_robust_pnp(f, sp, o.robust_scale, o.robust_rounds, o.lm_iterations, pose);
  r.pose = pose;
  r.score = soft_score(f, pose, sp, -std::numeric_limits<double>::infinity()).score;
  scratch.resize(static_cast<size_t>(f.n));
  const int count = collect_inliers(f, pose, sp, scratch.data());
  r.num_inliers = count;
  r.inliers.assign(static_cast<size_t>(f.n_total), 0);
  for (int k = 0; k < count; ++k) r.inliers[static_cast<size_t>(f.original[scratch[k]])] = 1;
}

}  // namespace

void ransac_batch_scored(const std::vector<Frame>& frames, const std::vector<int>& status, const RansacOptions& o,
                         const std::vector<uint64_t>& seeds, int num_threads, const BatchScorer& scorer,
                         std::vector<RansacResult>& results) {
  const int B = static_cast<int>(frames.size());
  results.assign(static_cast<size_t>(B), RansacResult());
  const int option_status = (o.training || o.adaptive) ? static_cast<int>(kBadOptions) : check_options(o);
  for (int b = 0; b < B; ++b) {
    const int st = option_status != kOk ? option_status : status[static_cast<size_t>(b)];
    results[static_cast<size_t>(b)].status = st;
  }
  if (option_status != kOk || B == 0) return;
  const ScoreParams sp = make_score_params(o.threshold, o.max_reprojection_error);
  const int M = o.num_hypotheses;
  const int64_t total = static_cast<int64_t>(B) * M;
  const int threads = resolve_threads(num_threads);

  // 1. Hypotheses on the CPU: hypothesis h of frame b from the stream Rng(seed_b, h), as ransac_fixed.
  std::vector<Pose> poses(static_cast<size_t>(total));  // identity for failed hypotheses and frames
  std::vector<uint8_t> valid(static_cast<size_t>(total), 0);
  std::vector<int64_t> tries(static_cast<size_t>(total), 0);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && total > 1)
  for (int64_t k = 0; k < total; ++k) {
    const int b = static_cast<int>(k / M), h = static_cast<int>(k % M);
    if (results[static_cast<size_t>(b)].status != kOk) continue;
    const Frame& f = frames[static_cast<size_t>(b)];
    Rng rng(seeds[static_cast<size_t>(b)], static_cast<uint64_t>(h));
    int sample[4];
    while (tries[static_cast<size_t>(k)] < o.max_tries_per_hypothesis) {
      ++tries[static_cast<size_t>(k)];
      if (draw_hypothesis(f, Model::kPnP, sp, rng, poses[static_cast<size_t>(k)], sample)) {
        valid[static_cast<size_t>(k)] = 1;
        break;
      }
    }
  }

  // 2. The heavy part in one call: every hypothesis on every cell.
  std::vector<double> scores(static_cast<size_t>(total), 0.0);
  std::vector<int> inliers(static_cast<size_t>(total), 0);
  scorer(poses.data(), M, sp, scores.data(), inliers.data());

  // 3. Argmax per frame (ties to the lowest index), then refine the winner on the CPU.
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && B > 1)
  for (int b = 0; b < B; ++b) {
    RansacResult& r = results[static_cast<size_t>(b)];
    if (r.status != kOk) continue;
    int chosen = -1;
    for (int h = 0; h < M; ++h) {
      const size_t k = static_cast<size_t>(b) * M + h;
      r.num_samples += tries[k];
      if (!valid[k]) continue;
      ++r.num_hypotheses;
      if (chosen < 0 || scores[k] > scores[static_cast<size_t>(b) * M + chosen]) chosen = h;
    }
    if (chosen < 0) {
      r.status = kNoHypothesis;
      continue;
    }
    const size_t k = static_cast<size_t>(b) * M + chosen;
    r.selected = chosen;
    r.selected_score = scores[k];
    finish(frames[static_cast<size_t>(b)], o, sp, poses[k], r);
  }
}

}  // namespace transpose
