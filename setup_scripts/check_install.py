#!/usr/bin/env python3
"""Sanity check of an installation: the native core loads, one OpenMP runtime, a pose is recovered.

    python setup_scripts/check_install.py

Exits 0 when everything works, 1 with the reason otherwise.
"""
import sys


def main() -> int:
    try:
        import numpy as np

        import transpose
        from transpose import geometry, ransac
    except ImportError as exc:
        print(f"error: cannot import transpose ({exc}); install it with `pip install .`", file=sys.stderr)
        return 1
    info = transpose.check()
    if len(info["openmp_runtimes"]) > 1:
        print(f"error: {len(info['openmp_runtimes'])} OpenMP runtimes loaded: {info['openmp_runtimes']}", file=sys.stderr)
        return 1
    # a known pose from an exact coordinate map must come back to the micrometre
    rng = np.random.default_rng(0)
    K = geometry.intrinsics_from_focal(525.0, 640, 480)
    T = geometry.make_pose(geometry.rvec_to_rotmat([0.1, -0.2, 0.05]), [0.3, -0.1, 0.2])
    depth = rng.uniform(1.0, 4.0, size=(60, 80))
    coords = geometry.backproject_depth(depth, K, T, pixels=geometry.cell_centers(60, 80)).transpose(2, 0, 1)
    result = ransac.estimate_pose(coords, K, seed=0)
    rot, trans = geometry.pose_errors(result.pose, T)
    print(f"{'pose check':16s} rotation error {rot:.2e} deg, translation error {trans:.2e} m")
    if rot > 1e-3 or trans > 1e-5:
        print("error: the native core did not recover a known pose", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
