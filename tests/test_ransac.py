"""RANSAC/PnP core through transpose.ransac on synthetic 80x60 coordinate maps (640x480, f = 525)."""
import dataclasses

import numpy as np
import pytest
import torch

from transpose import geometry as g
from transpose import _core, ransac

H, W, STRIDE, FOCAL = 60, 80, 8, 525.0


def synthetic_frame(seed, outliers=0.5, noise_px=1.0, depth_noise=0.0):
    """A random camera looking at random depths: coordinate map (3, H, W), K, T_c2w, true inlier mask,
    camera-frame points (H*W, 3) (with ``depth_noise`` metres of noise)."""
    rng = np.random.default_rng(seed)
    K = g.intrinsics_from_focal(FOCAL, 640, 480)
    T = g.make_pose(g.quat_to_rotmat(rng.normal(size=4)), rng.normal(size=3))
    pixels = g.cell_centers(H, W, STRIDE).reshape(-1, 2)
    depth = rng.uniform(1.0, 5.0, size=len(pixels))
    seen = pixels + rng.normal(scale=noise_px, size=pixels.shape)  # 1 px noise on the 2D side
    cam = np.c_[(seen - K[:2, 2]) / FOCAL * depth[:, None], depth]
    world = g.transform_points(T, cam)
    outlier = np.zeros(len(pixels), dtype=bool)
    outlier[rng.choice(len(pixels), int(round(outliers * len(pixels))), replace=False)] = True
    lo, hi = world.min(0), world.max(0)
    world[outlier] = rng.uniform(lo, hi, size=(int(outlier.sum()), 3))
    cam_noisy = cam + rng.normal(scale=depth_noise, size=cam.shape) if depth_noise else cam
    coords = world.T.reshape(3, H, W).astype(np.float32)
    return coords, K, T, ~outlier.reshape(H, W), cam_noisy


def assert_pose_close(T_est, T_gt, cm=1.0, deg=0.1):
    assert g.is_rigid(T_est, tol=1e-9), "the estimate is not a rigid transform"
    rot, trans = g.pose_errors(T_est, T_gt)
    assert rot < deg, f"rotation error {rot:.4f} deg"
    assert trans * 100 < cm, f"translation error {trans * 100:.3f} cm"


@pytest.mark.parametrize("outliers", [0.3, 0.5, 0.7])
def test_dsac_setting_recovers_pose(outliers):
    coords, K, T, inl_true, _ = synthetic_frame(1, outliers)
    res = ransac.estimate_pose(coords, K, stride=STRIDE, seed=3)
    assert_pose_close(res.pose, T)
    assert res.num_hypotheses == 64 and res.num_samples >= 64
    assert res.inliers.shape == (H, W) and res.inliers.dtype == bool
    # The inlier mask finds the true inliers (1 px noise << 10 px threshold); an outlier is only
    # accepted when it happens to land within 10 px of its cell.
    assert (res.inliers & inl_true).sum() >= 0.999 * inl_true.sum()
    assert (res.inliers & ~inl_true).sum() <= 0.01 * (~inl_true).sum()
    assert res.num_inliers == res.inliers.sum()
    assert np.allclose(res.pose, g.invert_pose(g.make_pose(res.R, res.t)))


@pytest.mark.parametrize("outliers", [0.5, 0.9])
def test_adaptive_mode_recovers_pose(outliers):
    coords, K, T, _, _ = synthetic_frame(2, outliers)
    res = ransac.estimate_pose(coords, K, adaptive=True, confidence=0.999, seed=5)
    assert_pose_close(res.pose, T)
    # the number of draws follows the inlier ratio: log(1 - 0.999) / log(1 - w^4)
    w = 1 - outliers
    needed = np.log(1e-3) / np.log1p(-w ** 4)
    assert res.num_samples <= 1.3 * needed + 64
    assert res.num_samples >= min(0.7 * needed, 64)


def test_adaptive_mode_respects_iteration_cap():
    coords, K, T, _, _ = synthetic_frame(3, 0.6)  # needs ~267 draws for 0.999
    res = ransac.estimate_pose(coords, K, adaptive=True, max_iterations=100, seed=1)
    assert res.num_samples == 100
    res = ransac.estimate_pose(coords, K, adaptive=True, min_iterations=1000, seed=1)
    assert res.num_samples >= 1000


@pytest.mark.parametrize("outliers", [0.5, 0.7])
def test_rgbd_mode_recovers_pose(outliers):
    coords, K, T, inl_true, cam = synthetic_frame(4, outliers, depth_noise=0.005)
    scene = coords.reshape(3, -1).T
    res = ransac.estimate_pose_rgbd(cam, scene, K, seed=2)
    assert_pose_close(res.pose, T)
    assert res.inliers.shape == (H * W,)
    # maps (3, H, W) work too, and missing depth (z <= 0 or NaN) is dropped, not an error
    cam_map = cam.T.reshape(3, H, W).copy()
    cam_map[2, :5, :] = 0.0
    cam_map[:, 5, :3] = np.nan
    res2 = ransac.estimate_pose_rgbd(cam_map, coords, K, seed=2, adaptive=True)
    assert_pose_close(res2.pose, T)
    assert not res2.inliers[:5].any() and not res2.inliers[5, :3].any()


def test_same_seed_same_pose_any_thread_count():
    coords, K, T, _, _ = synthetic_frame(5, 0.5)
    a = ransac.estimate_pose(coords, K, seed=11)
    b = ransac.estimate_pose(coords, K, seed=11)
    c = ransac.estimate_pose(coords, K, seed=11, num_threads=2)
    for r in (b, c):
        assert np.array_equal(a.R, r.R) and np.array_equal(a.t, r.t)
        assert a.selected == r.selected and a.num_samples == r.num_samples
    ad1 = ransac.estimate_pose(coords, K, seed=11, adaptive=True, num_threads=1)
    ad2 = ransac.estimate_pose(coords, K, seed=11, adaptive=True, num_threads=2)
    assert np.array_equal(ad1.R, ad2.R) and ad1.num_samples == ad2.num_samples
    # different seeds draw different samples and still succeed
    d = ransac.estimate_pose(coords, K, seed=12)
    assert d.num_samples != a.num_samples or d.selected_score != a.selected_score
    assert_pose_close(d.pose, T)
    assert_pose_close(a.pose, T)


def test_batch_equals_single_frames():
    frames = [synthetic_frame(10 + b, o) for b, o in enumerate([0.3, 0.5, 0.6])]
    coords = np.stack([f[0] for f in frames])
    Ks = np.stack([f[1] for f in frames])
    seeds = [7, 8, 9]
    batch = ransac.estimate_pose_batch(coords, Ks, seed=seeds, num_threads=2)
    for b, (f, res) in enumerate(zip(frames, batch)):
        single = ransac.estimate_pose(f[0], f[1], seed=seeds[b])
        assert np.array_equal(single.R, res.R) and np.array_equal(single.t, res.t)
        assert np.array_equal(single.inliers, res.inliers)
        assert_pose_close(res.pose, f[2])
    # one shared K and one shared seed
    shared = ransac.estimate_pose_batch(torch.from_numpy(coords), frames[0][1], seed=7, num_threads=1)
    assert np.array_equal(shared[0].R, batch[0].R)


def test_mask_and_zero_weights_agree():
    coords, K, T, inl_true, _ = synthetic_frame(6, 0.6)
    mask = np.ones((H, W), dtype=bool)
    mask[:, :20] = False
    coords_nan = coords.copy()
    coords_nan[:, :, :20] = np.nan  # masked cells may hold NaN
    a = ransac.estimate_pose(coords_nan, K, mask=mask, seed=4)
    b = ransac.estimate_pose(coords, K, weights=mask.astype(np.float32), seed=4)
    assert np.array_equal(a.R, b.R) and np.array_equal(a.t, b.t)
    assert not a.inliers[:, :20].any()
    assert_pose_close(a.pose, T)


def test_weights_scale_score_and_refinement():
    coords, K, T, inl_true, _ = synthetic_frame(7, 0.5)
    w = np.where(inl_true, 1.0, 0.25)
    res = ransac.estimate_pose(coords, K, weights=w, seed=1)
    assert_pose_close(res.pose, T)
    pixels = g.cell_centers(H, W, STRIDE).reshape(-1, 2)
    score, count, err = ransac.soft_score(pixels, coords.reshape(3, -1).T, K, res.R, res.t, weights=w.reshape(-1))
    assert score == pytest.approx(res.score, rel=1e-9)


def test_soft_score_matches_formula():
    coords, K, T, _, _ = synthetic_frame(8, 0.5)
    T_w2c = g.invert_pose(T)
    pixels = g.cell_centers(H, W, STRIDE).reshape(-1, 2)
    points = coords.reshape(3, -1).T.astype(np.float64)
    score, count, err = ransac.soft_score(pixels, points, K, T_w2c[:3, :3], T_w2c[:3, 3], threshold=10.0)
    uv, z = g.project(points, T, K)
    ref_err = np.where(z > 1e-3, np.minimum(np.linalg.norm(uv - pixels, axis=1), 100.0), 100.0)
    assert np.allclose(err, ref_err, rtol=1e-9, atol=1e-9)
    beta = 5.0 / 10.0
    ref_score = np.sum(1.0 - 1.0 / (1.0 + np.exp(-beta * (ref_err - 10.0))))
    assert score == pytest.approx(ref_score, rel=1e-9)
    assert count == int(np.sum(ref_err < 10.0))


def test_training_mode_returns_all_hypotheses():
    coords, K, T, _, _ = synthetic_frame(9, 0.5)
    res = ransac.estimate_pose(coords, K, training=True, refine_all=True, seed=3, num_hypotheses=16)
    M = 16
    assert res.hypotheses_R.shape == (M, 3, 3) and res.hypotheses_t.shape == (M, 3)
    assert res.logits.shape == (M,) and res.samples.shape == (M, 4)
    assert res.refined_R.shape == (M, 3, 3)
    assert 0 <= res.selected < M
    # logits = alpha * soft score / N, reproducible with the building blocks
    pixels = g.cell_centers(H, W, STRIDE).reshape(-1, 2)
    points = coords.reshape(3, -1).T
    h = res.selected
    s, _, _ = ransac.soft_score(pixels, points, K, res.hypotheses_R[h], res.hypotheses_t[h])
    assert res.logits[h] == pytest.approx(100.0 * s / (H * W), rel=1e-9)
    # each hypothesis reprojects its 4 sampled cells within the threshold
    _, _, err = ransac.soft_score(pixels, points, K, res.hypotheses_R[0], res.hypotheses_t[0])
    assert np.all(err[res.samples[0]] < 10.0)
    # the final pose is the refined selected hypothesis
    assert np.allclose(res.R, res.refined_R[h]) and np.allclose(res.t, res.refined_t[h])
    # a huge alpha makes softmax sampling an argmax
    sharp = ransac.estimate_pose(coords, K, training=True, alpha=1e7, seed=3, num_hypotheses=16)
    assert sharp.selected == int(np.argmax(sharp.logits))


def test_refine_pose_from_perturbed_start():
    coords, K, T, _, _ = synthetic_frame(13, 0.4)
    T_w2c = g.invert_pose(T)
    R0 = g.rvec_to_rotmat([0.004, -0.003, 0.002]) @ T_w2c[:3, :3]
    t0 = T_w2c[:3, 3] + np.array([0.01, -0.01, 0.02])
    pixels = g.cell_centers(H, W, STRIDE).reshape(-1, 2)
    R, t, used = ransac.refine_pose(pixels, coords.reshape(3, -1).T, K, R0, t0)
    assert used > 0.55 * H * W
    assert_pose_close(g.invert_pose(g.make_pose(R, t)), T)


def test_rigid_align_weighted():
    rng = np.random.default_rng(0)
    R = g.quat_to_rotmat(rng.normal(size=4))
    t = rng.normal(size=3)
    src = rng.normal(size=(50, 3))
    dst = src @ R.T + t
    dst[:10] += rng.normal(size=(10, 3))  # corrupted, but weight 0
    w = np.r_[np.zeros(10), np.ones(40)]
    Re, te = ransac.rigid_align(src, dst, w)
    assert np.abs(Re - R).max() < 1e-10 and np.abs(te - t).max() < 1e-10
    with pytest.raises(ValueError, match="degenerate"):
        ransac.rigid_align(np.outer(np.arange(5.0), [1, 2, 3]), np.outer(np.arange(5.0), [1, 2, 3]))


def test_torch_input_equals_numpy():
    coords, K, T, _, _ = synthetic_frame(14, 0.3)
    a = ransac.estimate_pose(coords, K, seed=1)
    b = ransac.estimate_pose(torch.from_numpy(coords).requires_grad_(True), torch.from_numpy(K), seed=1)
    assert np.array_equal(a.R, b.R)


def test_bad_inputs_raise_value_error():
    coords, K, T, _, _ = synthetic_frame(15, 0.3)
    cases = [
        (dict(coords=coords[:2]), "coords"),
        (dict(coords=coords[0]), "coords"),
        (dict(coords=coords.astype(np.complex64)), "dtype"),
        (dict(coords=coords > 0), "dtype"),
        (dict(coords=np.where(np.arange(W) == 3, np.nan, coords).astype(np.float32)), "NaN"),
        (dict(coords=np.where(np.arange(W) == 3, np.inf, coords).astype(np.float32)), "NaN or inf"),
        (dict(K=np.diag([0.0, 525.0, 1.0])), "focal"),
        (dict(K=np.diag([-525.0, 525.0, 1.0])), "focal"),
        (dict(K=np.eye(4)), "K"),
        (dict(K=np.full((3, 3), np.nan)), "K"),
        (dict(mask=np.zeros((H, W), dtype=bool)), "fewer than 4"),
        (dict(mask=np.eye(H, W, dtype=bool) & (np.arange(W) < 3)), "fewer than 4"),
        (dict(mask=np.ones((H, W))), "boolean"),
        (dict(mask=np.ones((H + 1, W), dtype=bool)), "mask"),
        (dict(weights=-np.ones((H, W))), "weights"),
        (dict(stride=0), "stride"),
        (dict(threshold=0.0), "threshold"),
        (dict(num_hypotheses=0), "num_hypotheses"),
        (dict(confidence=1.0), "confidence"),
        (dict(no_such_option=1), "unknown"),
        (dict(training=True, adaptive=True), "training"),
    ]
    for override, message in cases:
        kwargs = dict(coords=coords, K=K)
        kwargs.update(override)
        with pytest.raises(ValueError, match=message):
            ransac.estimate_pose(kwargs.pop("coords"), kwargs.pop("K"), **kwargs)


def test_degenerate_configurations_raise():
    coords, K, _, _, _ = synthetic_frame(16, 0.0)
    same = np.ones_like(coords)  # every cell sees the same scene point
    with pytest.raises(ValueError, match="degenerate"):
        ransac.estimate_pose(same, K)
    line = np.broadcast_to(np.linspace(0, 1, H * W).reshape(1, H, W), (3, H, W)).copy()  # collinear
    with pytest.raises(ValueError, match="degenerate"):
        ransac.estimate_pose(line, K)
    # pure noise: no 4 cells agree on a pose within the try budget
    rng = np.random.default_rng(0)
    noise = rng.uniform(-1, 1, size=(3, 4, 4)) + np.array([0, 0, 3.0]).reshape(3, 1, 1)
    with pytest.raises(ValueError, match="no valid pose hypothesis"):
        ransac.estimate_pose(noise, K, max_tries_per_hypothesis=20, num_hypotheses=2, threshold=0.01)
    # explicit correspondences with too few points, and bad batch input
    with pytest.raises(ValueError, match="fewer than 4"):
        ransac.estimate_pose_from_points(np.zeros((3, 2)), np.ones((3, 3)), K)
    with pytest.raises(ValueError, match="points"):
        ransac.estimate_pose_from_points(np.zeros((5, 2)), np.ones((4, 3)), K)
    with pytest.raises(ValueError, match="seed"):
        ransac.estimate_pose_batch(np.stack([coords, coords]), K, seed=[1, 2, 3])
    with pytest.raises(ValueError, match=r"coords\[1\]"):
        bad = np.stack([coords, coords])
        bad[1, 0, 0, 0] = np.nan
        ransac.estimate_pose_batch(bad, K)


def test_explicit_points_variant():
    coords, K, T, inl_true, _ = synthetic_frame(17, 0.5)
    pixels = torch.from_numpy(g.cell_centers(H, W, STRIDE).reshape(-1, 2))
    res = ransac.estimate_pose_from_points(pixels, coords.reshape(3, -1).T, K, seed=1)
    assert res.inliers.shape == (H * W,)
    assert_pose_close(res.pose, T)
    # same correspondences as the map -> same answer
    res_map = ransac.estimate_pose(coords, K, seed=1)
    assert np.array_equal(res.R, res_map.R)


def test_core_entry_points_reject_bad_input_without_crashing():
    from transpose import _core

    px = np.zeros((10, 2))
    pts = np.ones((10, 3))
    K = np.array([525.0, 525.0, 320.0, 240.0])
    bad_calls = [
        lambda: _core.ransac(px, np.ones((9, 3)), K=K),
        lambda: _core.ransac(px, pts, K=np.ones(3)),
        lambda: _core.ransac(px, pts, K=K, options={"seed": "x"}),
        lambda: _core.ransac(px, pts, K=K, options={"threshold": -1.0}),
        lambda: _core.ransac(px, pts, K=np.array([0.0, 525.0, 320.0, 240.0])),
        lambda: _core.ransac(px, pts, weights=np.ones(3), K=K),
        lambda: _core.ransac(px, pts, K=K),  # every cell at the same pixel and point: degenerate
        lambda: _core.ransac_batch(px[None], pts[None], K=K[None], seeds=[1, 2]),
        lambda: _core.p3p(np.ones((3, 2)), np.ones((3, 3))),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()


def test_robust_refit_bounds_the_pull_of_biased_inliers():
    # 0.3 px noise everywhere; a quarter of the cells pushed 6 px to the right, inside tau = 10 px:
    # least squares follows them, the Cauchy re-fit (scale 1 px) keeps to the others
    coords, K, T, _, cam = synthetic_frame(5, outliers=0.0, noise_px=0.3)
    rng = np.random.default_rng(0)
    pushed = rng.random(len(cam)) < 0.25
    cam = cam.copy()
    cam[pushed, 0] += 6.0 / FOCAL * cam[pushed, 2]
    coords = g.transform_points(T, cam).T.reshape(3, H, W)
    least_squares = ransac.estimate_pose(coords, K, stride=STRIDE, seed=0)
    robust = ransac.estimate_pose(coords, K, stride=STRIDE, seed=0, robust_scale=1.0)
    rot_ls, trans_ls = g.pose_errors(least_squares.pose, T)
    rot_rb, trans_rb = g.pose_errors(robust.pose, T)
    assert rot_ls > 0.1  # the pushed cells bias the least-squares pose by a visible amount
    assert rot_rb < 0.25 * rot_ls and trans_rb < 0.25 * trans_ls
    assert_pose_close(robust.pose, T, cm=1.0, deg=0.1)
    assert robust.num_inliers == robust.inliers.sum() and robust.selected == least_squares.selected
    # the same through the batch and explicit-point entry points, and with float64 scoring
    batch = ransac.estimate_pose_batch(coords[None], K, stride=STRIDE, seed=[0], robust_scale=1.0)[0]
    assert np.allclose(batch.pose, robust.pose, atol=1e-9)
    exact = ransac.estimate_pose(coords, K, stride=STRIDE, seed=0, robust_scale=1.0, exact_scoring=True)
    assert_pose_close(exact.pose, T, cm=1.0, deg=0.1)

    # exact correspondences: the re-fit leaves the pose where least squares put it
    clean, K, T, _, _ = synthetic_frame(6, outliers=0.0, noise_px=0.0)
    a = ransac.estimate_pose(clean, K, stride=STRIDE, seed=0)
    b = ransac.estimate_pose(clean, K, stride=STRIDE, seed=0, robust_scale=1.0)
    assert np.allclose(a.pose, b.pose, atol=1e-7)

    for bad in (dict(robust_scale=-1.0), dict(robust_scale=float("nan")), dict(robust_rounds=-1),
                dict(robust_scale=1.0, training=True)):
        with pytest.raises(ValueError, match="robust"):
            ransac.estimate_pose(coords, K, stride=STRIDE, **bad)


def test_strided_maps_are_read_in_place_and_give_the_same_pose():
    coords, K, T, _, _ = synthetic_frame(21, 0.4)
    dense = np.ascontiguousarray(coords)
    ref = ransac.estimate_pose(dense, K, seed=4)
    assert_pose_close(ref.pose, T)
    channel_last = np.ascontiguousarray(dense.transpose(1, 2, 0)).transpose(2, 0, 1)  # (H, W, 3) memory
    reversed_cells = np.ascontiguousarray(dense[:, ::-1, ::-1])[:, ::-1, ::-1]  # negative strides
    padded = np.zeros((3, H, W + 5), np.float32)
    padded[:, :, :W] = dense
    variants = {"channel-last": channel_last, "negative strides": reversed_cells,
                "channel-last float64": channel_last.astype(np.float64), "padded rows": padded[:, :, :W]}
    for name, view in variants.items():
        assert not view.flags.c_contiguous
        if name != "padded rows":  # its cells do not flatten to one stride: copied, still correct
            assert np.shares_memory(ransac._map_planes(view, "coords"), view), name
        res = ransac.estimate_pose(view, K, seed=4)
        assert np.array_equal(res.R, ref.R) and np.array_equal(res.t, ref.t), name
        assert np.array_equal(res.inliers, ref.inliers), name
    # a batch of channel-last maps, frames read at the batch stride
    batch = np.ascontiguousarray(np.stack([dense, dense[:, ::-1]]).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    out = ransac.estimate_pose_batch(batch, K, seed=[4, 4], num_threads=1)
    assert np.array_equal(out[0].R, ref.R)
    assert np.array_equal(out[1].R, ransac.estimate_pose(np.ascontiguousarray(dense[:, ::-1]), K, seed=4).R)
    # NaN and inf are found in a strided map too
    bad = channel_last.copy(order="K")
    bad[1, 7, 3] = np.nan
    assert not bad.flags.c_contiguous
    with pytest.raises(ValueError, match="NaN"):
        ransac.estimate_pose(bad, K)
    bad[1, 7, 3] = -np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        ransac.estimate_pose(bad, K)


def test_options_and_intrinsics_checked_once_still_apply_per_call():
    coords, K, T, _, _ = synthetic_frame(22, 0.3)
    first = ransac.estimate_pose(coords, K, seed=5, threshold=8.0)
    other = ransac.estimate_pose(coords, K, seed=6, threshold=8.0)
    again = ransac.estimate_pose(coords, K, seed=5, threshold=8.0)
    assert np.array_equal(first.R, again.R) and first.num_samples == again.num_samples
    assert (other.num_samples, other.selected_score) != (first.num_samples, first.selected_score)
    # the seed is checked on every call, cached options or not
    for seed in (-1, 2 ** 64, "x"):
        with pytest.raises(ValueError, match="seed"):
            ransac.estimate_pose(coords, K, seed=seed, threshold=8.0)
    # an unhashable value is validated the usual way
    assert np.array_equal(ransac.estimate_pose(coords, K, seed=5, threshold=np.array(8.0)).R, first.R)
    with pytest.raises(ValueError, match="threshold"):
        ransac.estimate_pose(coords, K, threshold=np.array(-1.0))
    # 64 and 64.0 are different options: the float is refused although the int was seen first
    ransac.estimate_pose(coords, K, num_hypotheses=64)
    with pytest.raises(ValueError, match="num_hypotheses"):
        ransac.estimate_pose(coords, K, num_hypotheses=64.0)
    # K: a new matrix (or the same one changed in place) is checked again; bad ones still raise
    K2 = K.copy()
    K2[0, 2] += 4.0
    moved = ransac.estimate_pose(coords, K2, seed=5, threshold=8.0)
    assert not np.array_equal(moved.t, first.t)
    K2[0, 0] = -1.0
    with pytest.raises(ValueError, match="focal"):
        ransac.estimate_pose(coords, K2)
    Kv = ransac._intrinsics(K)
    assert not Kv.flags.writeable and np.array_equal(Kv, [K[0, 0], K[1, 1], K[0, 2], K[1, 2]])


def test_core_takes_parsed_options_and_a_separate_seed():
    coords, K, _, _, _ = synthetic_frame(23, 0.3)
    pixels, planes, _, shape = ransac._map_correspondences(coords, 8, None, None)
    Kv = ransac._intrinsics(K)
    as_dict = _core.ransac(pixels, planes, None, None, Kv, dict(threshold=8.0, seed=9), planes=True)
    parsed = _core.CoreOptions(dict(threshold=8.0))
    assert (parsed.seed, parsed.threshold, parsed.num_hypotheses) == (0, 8.0, 64)
    d = _core.ransac(pixels, planes, None, None, Kv, parsed, True, 9, shape)
    assert np.array_equal(d["R"], as_dict["R"]) and d["num_samples"] == as_dict["num_samples"]
    assert d["inliers"].shape == shape and np.array_equal(d["inliers"].reshape(-1), as_dict["inliers"])
    # the dict holds every PoseResult field, so estimate_pose can take it as the result's attributes
    assert set(d) == {f.name for f in dataclasses.fields(ransac.PoseResult)}
    res = ransac.estimate_pose(coords, K, seed=9, threshold=8.0)
    assert np.array_equal(res.R, d["R"]) and res.logits is None and res.inliers.shape == shape
    with pytest.raises(ValueError, match="seed"):
        _core.ransac(pixels, planes, None, None, Kv, parsed, True, -1, shape)
    with pytest.raises(ValueError, match="threshold"):
        _core.CoreOptions(dict(threshold=-1.0))


@pytest.mark.parametrize("outliers", [0.3, 0.7])
def test_hypotheses_are_polished_p3p_solutions_whose_4th_cell_agrees(outliers):
    """The sampler tests each P3P candidate's 4th cell before polishing it; what it keeps must be
    exactly one of the full solver's solutions for the sample's first 3 cells, with all 4 cells
    within the threshold."""
    coords, K, _, _, _ = synthetic_frame(24, outliers)
    res = ransac.estimate_pose(coords, K, seed=3, training=True, threshold=10.0)
    pixels = g.cell_centers(H, W, STRIDE).reshape(-1, 2)
    points = coords.reshape(3, -1).T.astype(np.float64)
    bearings = np.c_[(pixels - K[:2, 2]) / np.diag(K)[:2], np.ones(len(pixels))]
    checked = 0
    for R, t, sample in zip(res.hypotheses_R, res.hypotheses_t, res.samples):
        if sample[0] < 0:
            continue
        solutions = ransac.p3p(bearings[sample[:3]], points[sample[:3]])
        assert any(np.array_equal(R, Rs) and np.array_equal(t, ts) for Rs, ts in solutions)
        uv, _ = g.project(points[sample], g.invert_pose(g.make_pose(R, t)), K)
        assert np.linalg.norm(uv - pixels[sample], axis=1).max() < 10.0
        checked += 1
    assert checked == 64


def test_map_entry_takes_the_plain_case_and_hands_back_the_rest():
    """_core.ransac_map is estimate_pose's one-step path: the same result as the general path on a
    plain float map with a pinhole K, None for anything the general path must check and name."""
    coords, K, _, _, _ = synthetic_frame(25, 0.3)
    parsed = _core.CoreOptions(dict(threshold=8.0))
    d = _core.ransac_map(coords, K, 8, parsed, 4)
    pixels, planes, _, shape = ransac._map_correspondences(coords, 8, None, None)
    ref = _core.ransac(pixels, planes, None, None, ransac._intrinsics(K), parsed, True, 4, shape)
    for key in ("R", "t", "pose", "inliers", "score", "selected_score", "num_samples"):
        assert np.array_equal(d[key], ref[key]), key
    # a channel-last view (cells one stride apart) is read in place too
    channel_last = np.ascontiguousarray(coords.transpose(1, 2, 0)).transpose(2, 0, 1)
    assert np.array_equal(_core.ransac_map(channel_last, K, 8, parsed, 4)["R"], d["R"])
    nan_map = coords.copy()
    nan_map[0, 3, 3] = np.nan
    skewed = K.copy()
    skewed[0, 1] = 0.5
    for args in ((coords.astype(np.int32), K, 8), (coords[:, :, ::2].transpose(0, 2, 1), K, 8),
                 (coords, skewed, 8), (coords, K.astype(np.float32), 8), (coords, K, True), (coords, K, 8.0),
                 (coords, K, 0), (nan_map, K, 8), (coords[:, :1, :3], K, 8), (coords[None], K, 8)):
        assert _core.ransac_map(*args, parsed, 4) is None
    assert _core.ransac_map(coords, K, 8, dict(threshold=8.0), 4) is None
    assert _core.ransac_map(coords, K, 8, parsed, -1) is None
    # and estimate_pose still names the culprit
    with pytest.raises(ValueError, match="coords: 1 valid entries contain NaN"):
        ransac.estimate_pose(nan_map, K)
    with pytest.raises(ValueError, match="skew"):
        ransac.estimate_pose(coords, skewed)


def test_map_entry_accepts_exactly_the_intrinsics_python_accepts():
    """ransac_map checks K natively (a twin of geometry.check_intrinsics, kept for a cold call's
    cost): for every variant it must take K exactly when the Python check passes."""
    coords, K, _, _, _ = synthetic_frame(26, 0.3)
    parsed = _core.CoreOptions({})
    variants = []
    for (r, c), values in {(0, 0): (-525.0, 0.0, np.nan, np.inf), (1, 1): (-1.0, 0.0), (0, 1): (0.5, -0.0),
                           (1, 0): (1e-3,), (2, 0): (1e-3,), (2, 1): (-2.0,), (0, 2): (np.nan, -50.0),
                           (2, 2): (1.0 + 1e-10, 1.0 + 2e-9, 2.0)}.items():
        for v in values:
            bad = K.copy()
            bad[r, c] = v
            variants.append(bad)
    for variant in variants:
        try:
            ransac._intrinsics_checked(variant, "K")
            python_accepts = True
        except ValueError:
            python_accepts = False
        assert (_core.ransac_map(coords, variant, 8, parsed, 0) is not None) == python_accepts, variant
