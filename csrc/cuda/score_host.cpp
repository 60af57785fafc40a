#include "score_host.h"

#include <cstdint>

#include "core/ransac.h"

namespace transpose {

template <typename T>
void score_hypotheses_host(const DenseMaps<T>& maps, const FrameIntrinsics* K, const Pose* poses, int M,
                           const ScoreParams& sp, double* scores, int* inliers, int num_threads) {
  const cell::CellParams c = cell::make_cell_params(sp);
  const int64_t total = static_cast<int64_t>(maps.batch) * M, cells = maps.cells();
  const int threads = resolve_threads(num_threads);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && total > 1)
  for (int64_t k = 0; k < total; ++k) {
    const int b = static_cast<int>(k / M);
    const FrameIntrinsics& in = K[b];
    const cell::CellPose p = cell::make_cell_pose(poses[k], in.fx, in.fy);
    double s = 0.0;
    int n = 0;
    for (int64_t i = 0; i < cells; ++i) accumulate_cell(maps, b, i, p, in, c, s, n);
    scores[k] = s;
    inliers[k] = n;
  }
}

template void score_hypotheses_host<float>(const DenseMaps<float>&, const FrameIntrinsics*, const Pose*, int,
                                           const ScoreParams&, double*, int*, int);
template void score_hypotheses_host<double>(const DenseMaps<double>&, const FrameIntrinsics*, const Pose*, int,
                                            const ScoreParams&, double*, int*, int);

}  // namespace transpose
