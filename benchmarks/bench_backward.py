"""Cost of the backward pass of DSAC*'s expected pose loss (end-to-end training) per frame.

Synthetic frames as bench_ransac.py: an 80x60 coordinate map at stride 8 (4800 cells), 640x480
image, f = 525, 1 px noise, a share of the cells replaced by random scene points; 64 hypotheses,
threshold 10 px, alpha 100, DSAC*'s pose loss. For each frame the core runs forward only
(hypotheses, scores, refinement of all 64, loss) and forward + backward with the same seed; the
backward cost is the difference. Two backward settings: the default (hypotheses with probability
below 1e-6 skipped) and every hypothesis (min_probability 0, the worst case). Median over frames,
for 1 and 2 threads (threads over hypotheses). Never asserts on time.

    python benchmarks/bench_backward.py            # 10 frames per outlier ratio
    python benchmarks/bench_backward.py --quick    # 2 frames
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from transpose import geometry as g
from transpose import ransac

H, W, STRIDE, FOCAL, WIDTH, HEIGHT = 60, 80, 8, 525.0, 640, 480


def make_frame(seed: int, outliers: float, noise_px: float = 1.0):
    """``(coords (1, 3, H, W), K, T_c2w)``: random pose and depths 1-5 m, ``outliers`` of the cells replaced."""
    rng = np.random.default_rng(seed)
    K = g.intrinsics_from_focal(FOCAL, WIDTH, HEIGHT)
    T = g.make_pose(g.quat_to_rotmat(rng.normal(size=4)), rng.normal(size=3))
    pixels = g.cell_centers(H, W, STRIDE).reshape(-1, 2)
    depth = rng.uniform(1.0, 5.0, size=len(pixels))
    seen = pixels + rng.normal(scale=noise_px, size=pixels.shape)
    cam = np.c_[(seen - K[:2, 2]) / FOCAL * depth[:, None], depth]
    world = g.transform_points(T, cam)
    bad = rng.random(len(pixels)) < outliers
    lo, hi = world.min(0), world.max(0)
    world[bad] = rng.uniform(lo, hi, size=(int(bad.sum()), 3))
    return world.T.reshape(1, 3, H, W), K, T


def timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--outliers", type=float, nargs="+", default=[0.3, 0.6])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    frames = 2 if args.quick else args.frames
    print(f"{H * W} cells, 64 hypotheses; ms per frame (median of {frames} frames, best of 3 runs each)")
    print(f"{'outliers':>8} {'threads':>7} {'forward':>9} {'backward':>9} {'bwd(all)':>9} {'hyps used':>9}")
    for outliers in args.outliers:
        for threads in args.threads:
            fwd, bwd, bwd_all, used = [], [], [], []
            for f in range(frames):
                coords, K, T = make_frame(1000 + f, outliers)
                common = dict(seed=f, num_threads=threads, num_hypotheses=64)
                t_f = timed(lambda: ransac.dsac_loss_numpy(coords, K, T, gradient=False, **common))
                t_b = timed(lambda: ransac.dsac_loss_numpy(coords, K, T, **common))
                t_a = timed(lambda: ransac.dsac_loss_numpy(coords, K, T, min_probability=0.0, **common))
                info = ransac.dsac_loss_numpy(coords, K, T, **common)[2][0]
                fwd.append(t_f)
                bwd.append(max(0.0, t_b - t_f))
                bwd_all.append(max(0.0, t_a - t_f))
                used.append(info.get("backward_hypotheses", 0))
            print(f"{outliers:>8.0%} {threads:>7d} {statistics.median(fwd):>9.2f} {statistics.median(bwd):>9.2f} "
                  f"{statistics.median(bwd_all):>9.2f} {statistics.median(used):>9.1f}")


if __name__ == "__main__":
    main()
