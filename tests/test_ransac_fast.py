"""Test-mode fast path of the RANSAC core: float32 scoring and preemptive selection against the
exact float64 path (exact_scoring=True, the behaviour before the fast path)."""
import numpy as np
import pytest

from transpose import geometry as g
from transpose import ransac

from test_ransac import H, W, STRIDE, assert_pose_close, synthetic_frame


def test_float32_score_matches_float64():
    coords, K, T, _, _ = synthetic_frame(21, 0.5)
    pixels = g.cell_centers(H, W, STRIDE).reshape(-1, 2)
    points = coords.reshape(3, -1).T.astype(np.float64)
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.2, 2.0, size=len(points))
    T_w2c = g.invert_pose(T)
    for k in range(20):
        # from the true pose to poses a few degrees / decimetres off (scores across the range)
        R = g.rvec_to_rotmat(rng.normal(scale=0.02 * k / 20, size=3)) @ T_w2c[:3, :3]
        t = T_w2c[:3, 3] + rng.normal(scale=0.1 * k / 20, size=3)
        for w in (None, weights):
            exact, count, _ = ransac.soft_score(pixels, points, K, R, t, weights=w)
            fast, count32, _ = ransac.soft_score(pixels, points, K, R, t, weights=w, float32=True)
            assert fast == pytest.approx(exact, rel=1e-4)
            assert abs(count32 - count) <= 2  # only cells within rounding of the threshold may differ


def test_float32_score_far_from_origin():
    """Scene points are scored relative to a scene point, so a scene 10 km from the origin loses
    nothing to float32."""
    coords, K, T, _, _ = synthetic_frame(22, 0.3)
    shift = np.array([10000.0, -5000.0, 2000.0])
    pixels = g.cell_centers(H, W, STRIDE).reshape(-1, 2)
    points = coords.reshape(3, -1).T.astype(np.float64) + shift
    T_shifted = T.copy()
    T_shifted[:3, 3] += shift
    T_w2c = g.invert_pose(T_shifted)
    exact, _, _ = ransac.soft_score(pixels, points, K, T_w2c[:3, :3], T_w2c[:3, 3])
    fast, _, _ = ransac.soft_score(pixels, points, K, T_w2c[:3, :3], T_w2c[:3, 3], float32=True)
    assert fast == pytest.approx(exact, rel=1e-4)
    res = ransac.estimate_pose_from_points(pixels, points, K, seed=1)
    assert_pose_close(res.pose, T_shifted)
    # the float32 refinement works relative to a scene point too: the float64 fit's pose to ~1e-7
    exact = ransac.estimate_pose_from_points(pixels, points, K, seed=1, exact_scoring=True)
    assert np.abs(res.pose - exact.pose).max() < 1e-6
    assert res.score == pytest.approx(exact.score, rel=1e-9) and res.num_inliers == exact.num_inliers


@pytest.mark.parametrize("outliers", [0.3, 0.5, 0.7, 0.8])
def test_preemptive_selection_equals_exhaustive(outliers):
    agree = trials = 0
    for k in range(6):
        coords, K, T, _, _ = synthetic_frame(100 + k, outliers)
        for seed in range(4):
            exact = ransac.estimate_pose(coords, K, seed=seed, exact_scoring=True)
            fast = ransac.estimate_pose(coords, K, seed=seed)
            plain32 = ransac.estimate_pose(coords, K, seed=seed, preemptive_cells=0)  # float32, every cell
            trials += 1
            agree += fast.selected == exact.selected
            assert plain32.selected == exact.selected
            assert fast.num_hypotheses == exact.num_hypotheses and fast.num_samples == exact.num_samples
            assert_pose_close(fast.pose, T)
            if fast.selected == exact.selected:
                # reported scores stay the float64 soft score
                assert fast.selected_score == pytest.approx(exact.selected_score, rel=1e-12)
    assert agree >= 0.95 * trials


def test_fast_path_reports_float64_scores_and_inliers():
    coords, K, T, inl_true, _ = synthetic_frame(31, 0.5)
    res = ransac.estimate_pose(coords, K, seed=2)
    exact = ransac.estimate_pose(coords, K, seed=2, exact_scoring=True)
    pixels = g.cell_centers(H, W, STRIDE).reshape(-1, 2)
    score, count, _ = ransac.soft_score(pixels, coords.reshape(3, -1).T, K, res.R, res.t)
    assert res.score == pytest.approx(score, rel=1e-9)
    assert res.num_inliers == count == res.inliers.sum()
    # the refinement sums its normal equations in float32 and skips confirming passes: the same
    # optimum to ~1e-7 (metres / rotation entries)
    assert np.abs(res.pose - exact.pose).max() < 1e-6
    assert np.array_equal(res.inliers, exact.inliers)
    unrefined = ransac.estimate_pose(coords, K, seed=2, refine=False)
    assert unrefined.score == pytest.approx(unrefined.selected_score, rel=1e-12)


def test_preemption_options():
    coords, K, T, _, _ = synthetic_frame(32, 0.5)
    # a subset as large as the frame, a single survivor, tiny frames: all still find the pose
    for opts in (dict(preemptive_cells=H * W), dict(preemptive_keep=1), dict(preemptive_cells=2000),
                 dict(early_exit=False), dict(adaptive=True)):
        assert_pose_close(ransac.estimate_pose(coords, K, seed=3, **opts).pose, T)
    small = coords[:, :10, :10]
    res = ransac.estimate_pose(small, K, seed=3)
    assert res.selected >= 0
    for bad in (dict(preemptive_cells=-1), dict(preemptive_keep=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ransac.estimate_pose(coords, K, **bad)


def test_map_dtypes_and_layouts_agree():
    """Maps reach the core as (3, H*W) planes: float32 as given, anything else as float64."""
    coords, K, T, _, _ = synthetic_frame(33, 0.4)
    ref = ransac.estimate_pose(coords, K, seed=5)
    wide = np.zeros((3, H, 2 * W), dtype=np.float32)
    wide[:, :, ::2] = coords
    for variant in (coords.astype(np.float64), wide[:, :, ::2], np.asfortranarray(coords)):
        res = ransac.estimate_pose(variant, K, seed=5)
        assert np.array_equal(res.R, ref.R) and np.array_equal(res.inliers, ref.inliers)
    batch = ransac.estimate_pose_batch(np.stack([coords, coords]).astype(np.float64), K, seed=[5, 5])
    assert all(np.array_equal(r.R, ref.R) for r in batch)
    assert np.allclose(ref.pose, g.invert_pose(g.make_pose(ref.R, ref.t)), atol=1e-12)
