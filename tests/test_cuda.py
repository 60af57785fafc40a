"""GPU path of the native core (csrc/cuda, transpose.ransac_gpu).

Three layers, so that most of it is checked on a machine without a GPU:

- the kernels compile (nvcc, when installed);
- the kernels' per-cell math, compiled on the host in every build (the "host twin"), equals the
  core's soft_score, and the GPU path's RANSAC driver run with the host twin equals the CPU core;
- on a CUDA device with the kernels built in: GPU scores equal CPU scores, poses are recovered.
"""
import glob
import os
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from test_ransac import FOCAL, H, STRIDE, W, assert_pose_close, synthetic_frame
from transpose import _core
from transpose import geometry as g
from transpose import ransac, ransac_gpu

ROOT = Path(__file__).resolve().parents[1]
CU_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def find_nvcc():
    """nvcc on PATH, in /usr/local/cuda/bin or the newest /usr/local/cuda-*/bin; None when absent."""
    found = shutil.which("nvcc")
    if found:
        return found
    for candidate in ["/usr/local/cuda/bin/nvcc"] + sorted(glob.glob("/usr/local/cuda-*/bin/nvcc"), reverse=True):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def intrinsics_vector(K):
    return np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]])


def perturbed_hypotheses(T_c2w, M, rng, rot_sigma=0.05, trans_sigma=0.2, behind=0):
    """M world-to-camera hypotheses around the true pose (R (M, 3, 3), t (M, 3)), from near (2 % of
    the sigmas) to far; the last `behind` ones turned around, so that most cells lie behind them."""
    w2c = g.invert_pose(T_c2w)
    spread = np.linspace(0.02, 1.0, M)
    R = np.stack([g.rvec_to_rotmat(rng.normal(scale=rot_sigma * s, size=3)) @ w2c[:3, :3] for s in spread])
    t = w2c[:3, 3] + rng.normal(scale=trans_sigma, size=(M, 3)) * spread[:, None]
    flip = np.diag([1.0, -1.0, -1.0])  # 180 degrees about x: z forward becomes z backward
    for m in range(M - behind, M):
        R[m] = flip @ R[m]
        t[m] = flip @ t[m]
    return R, t


def core_scores(coords, K, R, t, weights, threshold, max_err):
    """The CPU core's soft_score, one pose at a time: scores (M,), inlier counts (M,)."""
    pixels = g.cell_centers(H, W, STRIDE).reshape(-1, 2)
    points = coords.reshape(3, -1).T.astype(np.float64)
    w = None if weights is None else weights.reshape(-1)
    keep = slice(None) if w is None else w > 0  # the core refuses NaN even in cells it would drop
    out = [ransac.soft_score(pixels[keep], points[keep], K, R[m], t[m],
                             weights=None if w is None else w[keep], threshold=threshold,
                             max_reprojection_error=max_err) for m in range(len(R))]
    return np.array([o[0] for o in out]), np.array([o[1] for o in out])


# --------------------------------------------------------------------------- (a) the kernels compile

def test_there_are_kernels():
    assert CU_SOURCES, "csrc/cuda/*.cu is empty"


@pytest.mark.parametrize("source", CU_SOURCES, ids=[p.name for p in CU_SOURCES])
def test_kernel_compiles(source, tmp_path):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (PATH, /usr/local/cuda*/bin)")
    out = tmp_path / (source.stem + ".o")
    cmd = [nvcc, "-std=c++17", "-arch=sm_90", "--Werror", "all-warnings", f"-I{ROOT / 'csrc'}", "-c",
           str(source), "-o", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    assert out.stat().st_size > 0
    assert time.perf_counter() - start < 60, "one kernel file took over a minute to compile"


# --------------------------------------------------------------------------- (b) host twin vs the core

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threshold, max_err", [(10.0, 100.0), (10.0, 50.0), (4.0, 100.0), (20.0, 15.0)])
def test_host_twin_equals_core_soft_score(dtype, threshold, max_err):
    """Random poses and maps, weights, dropped cells holding NaN, points behind the camera; the
    clamp at max_err below and above the negligible-term cut."""
    rng = np.random.default_rng(int(threshold * 7 + max_err))
    coords, K, T, _, _ = synthetic_frame(int(rng.integers(1000)), outliers=0.4)
    coords = coords.astype(dtype)
    weights = rng.uniform(0.1, 2.0, size=(H, W))
    weights[rng.random((H, W)) < 0.1] = 0.0
    coords[:, (weights == 0) & (rng.random((H, W)) < 0.5)] = np.nan  # a dropped cell may hold anything
    R, t = perturbed_hypotheses(T, 24, rng, behind=3)
    scores, inliers = _core.score_hypotheses_host(coords[None], weights[None], intrinsics_vector(K)[None],
                                                  float(STRIDE), R[None], t[None], threshold, max_err)
    ref_s, ref_n = core_scores(coords, K, R, t, weights, threshold, max_err)
    assert scores.shape == (1, 24) and inliers.shape == (1, 24)
    np.testing.assert_allclose(scores[0], ref_s, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(inliers[0], ref_n)
    assert ref_s.max() > 100  # hypotheses near the true pose are among them


def test_host_twin_points_behind_the_camera_count_as_max_error():
    """Points behind the camera (or closer than 1 mm) whose projection with the depth clamped would
    land on their own pixel still count as max_err, as in the core."""
    K = g.intrinsics_from_focal(FOCAL, 640, 480)
    pixels = g.cell_centers(H, W, STRIDE)
    rng = np.random.default_rng(3)
    depth = np.where(rng.random((H, W)) < 0.5, rng.uniform(-3.0, 5e-4, size=(H, W)), rng.uniform(1.0, 5.0, (H, W)))
    # x = (u - cx) / fx * d for d > 0 lands on the pixel; behind, the clamped depth 1e-3 would
    # project x = (u - cx) / fx * 1e-3 onto it, so place the point there
    scale = np.where(depth > 0.001, depth, 1e-3)
    cam = np.stack([(pixels[..., 0] - K[0, 2]) / FOCAL * scale, (pixels[..., 1] - K[1, 2]) / FOCAL * scale, depth])
    coords = cam.astype(np.float64)
    R, t = np.eye(3)[None], np.zeros((1, 3))
    for max_err in (100.0, 30.0):
        scores, inliers = _core.score_hypotheses_host(coords[None], None, intrinsics_vector(K)[None], float(STRIDE),
                                                      R[None], t[None], 10.0, max_err)
        ref_s, ref_n = core_scores(coords, K, R, t, None, 10.0, max_err)
        np.testing.assert_allclose(scores[0], ref_s, rtol=0, atol=1e-9)
        assert inliers[0, 0] == ref_n[0] == int((depth >= 1e-3).sum())


def test_host_twin_batches_frames_and_unit_weights():
    rng = np.random.default_rng(5)
    frames = [synthetic_frame(s, outliers=0.5) for s in (11, 12, 13)]
    coords = np.stack([f[0] for f in frames])
    K = np.stack([intrinsics_vector(f[1]) for f in frames])
    K[1, :2] *= 1.1  # per-frame intrinsics
    hyps = [perturbed_hypotheses(f[2], 16, rng) for f in frames]
    R = np.stack([h[0] for h in hyps])
    t = np.stack([h[1] for h in hyps])
    scores, inliers = _core.score_hypotheses_host(coords, None, K, float(STRIDE), R, t)
    for b in range(3):
        Kb = g.intrinsics_matrix(*K[b])
        ref_s, ref_n = core_scores(coords[b], Kb, R[b], t[b], None, 10.0, 100.0)
        np.testing.assert_allclose(scores[b], ref_s, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(inliers[b], ref_n)


@pytest.mark.parametrize("outliers", [0.3, 0.7])
def test_gpu_driver_with_host_twin_equals_cpu_core(outliers):
    """The GPU path's RANSAC driver (sampling, batched scoring, argmax, refinement) run with the host
    twin as scorer gives the CPU core's hypotheses, winner, pose and inliers."""
    frames = [synthetic_frame(s, outliers) for s in (21, 22)]
    coords = np.stack([f[0] for f in frames])
    Kv = np.stack([intrinsics_vector(f[1]) for f in frames])
    mask = np.ones((2, H, W), bool)
    mask[1, :7] = False
    coords[1][:, ~mask[1]] = np.nan
    weights = mask.astype(np.float64)
    opts = ransac.RansacOptions(num_hypotheses=96).to_core()
    ours = _core.ransac_maps_host(coords, weights, Kv, float(STRIDE), [3, 4], opts, 0)
    pixels = np.ascontiguousarray(np.broadcast_to(g.cell_centers(H, W, STRIDE).reshape(-1, 2), (2, H * W, 2)))
    points = np.ascontiguousarray(np.nan_to_num(coords.reshape(2, 3, -1).transpose(0, 2, 1).astype(np.float64)))
    # The GPU path scores every hypothesis on every cell: the CPU core's exact path is its reference.
    exact = dict(opts, exact_scoring=True)
    ref = _core.ransac_batch(pixels, points, None, weights.reshape(2, -1), Kv, [3, 4], exact, 0)
    for b, (a, r) in enumerate(zip(ours, ref)):
        assert a["selected"] == r["selected"]
        assert a["num_hypotheses"] == r["num_hypotheses"] and a["num_samples"] == r["num_samples"]
        assert abs(a["selected_score"] - r["selected_score"]) < 1e-9
        np.testing.assert_allclose(a["R"], r["R"], atol=1e-12)
        np.testing.assert_allclose(a["t"], r["t"], atol=1e-12)
        np.testing.assert_array_equal(a["inliers"], r["inliers"])
        assert_pose_close(g.invert_pose(g.make_pose(a["R"], a["t"])), frames[b][2])


def test_gpu_driver_refuses_training_and_adaptive():
    coords, K, _, _, _ = synthetic_frame(1)
    for mode in ("training", "adaptive"):
        with pytest.raises(ValueError, match="fixed-count test mode"):
            _core.ransac_maps_host(coords[None], None, intrinsics_vector(K)[None], 8.0, [0], {mode: True})


def test_python_route_on_cpu_tensors_equals_cpu_path():
    """transpose.ransac_gpu with CPU tensors (host twin): the route's validation and result
    conversion without a GPU, against estimate_pose / estimate_pose_batch."""
    coords, K, T, _, _ = synthetic_frame(31, 0.5)
    mask = np.ones((H, W), bool)
    mask[:, :4] = False
    coords[:, ~mask] = np.nan
    weights = np.random.default_rng(0).uniform(0.5, 1.5, size=(H, W))
    ref = ransac.estimate_pose(coords, K, mask=mask, weights=weights, seed=7, exact_scoring=True)
    ours = ransac_gpu.estimate_pose_maps(torch.from_numpy(coords), torch.from_numpy(K), mask=torch.from_numpy(mask),
                                         weights=weights, seeds=7, single=True)[0]
    assert ours.selected == ref.selected and ours.num_inliers == ref.num_inliers
    np.testing.assert_allclose(ours.pose, ref.pose, atol=1e-12)
    assert ours.inliers.shape == (H, W) and (ours.inliers == ref.inliers).all()
    batch = np.stack([coords, synthetic_frame(32, 0.3)[0]]).astype(np.float64)
    refs = ransac.estimate_pose_batch(batch, K, mask=np.stack([mask, np.ones_like(mask)]), seed=[1, 2],
                                      exact_scoring=True)
    outs = ransac_gpu.estimate_pose_maps(torch.from_numpy(batch), K, mask=np.stack([mask, np.ones_like(mask)]),
                                         seeds=[1, 2])
    for a, r in zip(outs, refs):
        assert a.selected == r.selected
        np.testing.assert_allclose(a.pose, r.pose, atol=1e-12)


def test_python_route_errors_match_cpu_path():
    coords, K, _, _, _ = synthetic_frame(1)
    bad = coords.copy()
    bad[:, 0, :3] = np.nan
    cases = [
        (dict(coords=coords[:2]), "coords: expected shape"),
        (dict(coords=bad), "coords: 3 valid entries contain NaN or inf"),
        (dict(coords=coords, mask=np.zeros((H, W), bool)), "fewer than 4 valid correspondences"),
        (dict(coords=coords, mask=np.ones((H, W))), "mask: expected a boolean mask"),
        (dict(coords=coords, weights=-np.ones((H, W))), "weights: weights must be finite and non-negative"),
        (dict(coords=coords, stride=0), "stride"),
    ]
    for kwargs, message in cases:
        c = kwargs.pop("coords")
        with pytest.raises(ValueError, match=message):
            ransac.estimate_pose(c, K, **kwargs)
        with pytest.raises(ValueError, match=message):
            ransac_gpu.estimate_pose_maps(torch.from_numpy(c), K, single=True, **kwargs)


class FakeCudaTensor:
    """Stands in for a CUDA tensor where routing only looks at `is_cuda`."""

    is_cuda = True


def test_route_choice_and_one_time_warning(monkeypatch):
    opts = ransac.RansacOptions()
    assert not ransac_gpu.use_gpu(np.zeros((3, 2, 2)), None, opts)
    assert not ransac_gpu.use_gpu(FakeCudaTensor(), "cpu", opts)
    with pytest.raises(ValueError, match="device"):
        ransac_gpu.use_gpu(FakeCudaTensor(), "gpu", opts)
    with pytest.raises(ValueError, match="fixed-count test mode"):
        ransac_gpu.use_gpu(FakeCudaTensor(), "cuda", ransac.RansacOptions(adaptive=True))
    monkeypatch.setattr(ransac_gpu, "extension_has_cuda", lambda: False)
    monkeypatch.setattr(ransac_gpu, "cuda_available", lambda: False)
    monkeypatch.setattr(ransac_gpu, "_warned", set())
    with pytest.raises(ValueError, match="built without CUDA kernels"):
        ransac_gpu.use_gpu(FakeCudaTensor(), "cuda", opts)
    with pytest.warns(RuntimeWarning, match="solved on the CPU"):
        assert not ransac_gpu.use_gpu(FakeCudaTensor(), None, opts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert not ransac_gpu.use_gpu(FakeCudaTensor(), "auto", opts)
    monkeypatch.setattr(ransac_gpu, "extension_has_cuda", lambda: True)
    monkeypatch.setattr(ransac_gpu, "cuda_available", lambda: True)
    assert ransac_gpu.use_gpu(FakeCudaTensor(), None, opts)
    with pytest.warns(RuntimeWarning, match="adaptive mode runs on the CPU"):
        assert not ransac_gpu.use_gpu(FakeCudaTensor(), None, ransac.RansacOptions(adaptive=True))


def test_cpu_results_unchanged_by_device_argument():
    coords, K, T, _, _ = synthetic_frame(3, 0.5)
    a = ransac.estimate_pose(coords, K, seed=1)
    b = ransac.estimate_pose(torch.from_numpy(coords), K, seed=1, device="cpu")
    np.testing.assert_array_equal(a.pose, b.pose)
    c = ransac.estimate_pose_batch(coords[None], K, seed=1, device="auto")[0]
    np.testing.assert_array_equal(a.pose, c.pose)


def test_has_cuda_is_reported():
    import transpose

    assert isinstance(_core.has_cuda(), bool)
    assert transpose.check(verbose=False)["cuda_kernels"] == _core.has_cuda()


# --------------------------------------------------------------------------- (c) on a GPU

gpu = pytest.mark.skipif(not (torch.cuda.is_available() and ransac_gpu.extension_has_cuda()),
                         reason="needs a CUDA device and transpose._core built with CUDA kernels")


@gpu
@pytest.mark.parametrize("M", [64, 256, 1024])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_scores_equal_cpu_scores(M, dtype):
    rng = np.random.default_rng(M)
    frames = [synthetic_frame(s, 0.5) for s in (41, 42)]
    coords = np.stack([f[0] for f in frames])
    weights = rng.uniform(0.0, 2.0, size=(2, H, W))
    weights[weights < 0.2] = 0.0
    for b in range(2):
        coords[b][:, weights[b] == 0] = np.nan  # dropped cells holding NaN must not leak into the sums
    K = np.stack([f[1] for f in frames])
    hyps = [perturbed_hypotheses(f[2], M, rng, behind=2) for f in frames]
    R = np.stack([h[0] for h in hyps])
    t = np.stack([h[1] for h in hyps])
    device_coords = torch.from_numpy(coords).to("cuda", dtype)
    gpu_s, gpu_n = ransac_gpu.score_hypotheses(device_coords, K, R, t, weights=torch.from_numpy(weights).cuda())
    cpu_s, cpu_n = ransac_gpu.score_hypotheses(device_coords.cpu(), K, R, t, weights=weights)
    assert gpu_s.shape == (2, M)
    np.testing.assert_allclose(gpu_s, cpu_s, rtol=1e-10, atol=1e-9)
    assert np.abs(gpu_n - cpu_n).max() <= 1  # a cell exactly at tau may round either way (FMA)
    ref_s, _ = core_scores(coords[0].astype(device_coords.cpu().numpy().dtype), K[0], R[0][:8], t[0][:8],
                           weights[0], 10.0, 100.0)
    np.testing.assert_allclose(gpu_s[0, :8], ref_s, rtol=1e-10, atol=1e-9)


@gpu
def test_estimate_pose_on_cuda_tensor_recovers_pose():
    coords, K, T, _, _ = synthetic_frame(51, 0.6)
    device_coords = torch.from_numpy(coords).cuda()
    res = ransac.estimate_pose(device_coords, K, seed=9, device="cuda")
    assert_pose_close(res.pose, T, cm=1.0, deg=0.1)
    ref = ransac.estimate_pose(coords, K, seed=9, exact_scoring=True)
    assert res.selected == ref.selected  # same seed, same hypotheses, same winner
    np.testing.assert_allclose(res.pose, ref.pose, atol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the automatic route takes the GPU without a warning
        auto = ransac.estimate_pose(device_coords, K, seed=9)
    np.testing.assert_array_equal(auto.pose, res.pose)


@gpu
def test_estimate_pose_batch_on_cuda_on_a_side_stream():
    frames = [synthetic_frame(s, 0.5) for s in (61, 62, 63)]
    host = np.stack([f[0] for f in frames])
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # the map is written on this stream; the kernel must follow it
        device_coords = torch.from_numpy(host).pin_memory().cuda(non_blocking=True) * 1.0
        results = ransac.estimate_pose_batch(device_coords, frames[0][1], seed=[1, 2, 3])
    for res, f in zip(results, frames):
        assert_pose_close(res.pose, f[2], cm=1.0, deg=0.1)


@pytest.mark.parametrize("use", ["none", "drop", "weight"])
def test_solve_frame_takes_tensors_as_the_gpu_route_hands_them(use):
    """evaluate.solve_frame with torch tensors (as localize_section passes a GPU network's output)
    builds the same uncertainty mask / weights and pose as with numpy arrays."""
    from transpose import evaluate

    coords, K, T, _, _ = synthetic_frame(71, 0.4)
    sigma = np.random.default_rng(1).uniform(0.01, 1.0, size=(H, W)).astype(np.float32)
    opts = evaluate.RansacOptions(uncertainty=use, seed=2)
    ref = evaluate.solve_frame(coords.astype(np.float64), K, sigma.astype(np.float64), opts)
    ours = evaluate.solve_frame(torch.from_numpy(coords), K, torch.from_numpy(sigma), opts)
    np.testing.assert_array_equal(ours.pose, ref.pose)
    np.testing.assert_array_equal(ours.inliers, ref.inliers)
    if use == "drop":
        assert ref.inliers.sum() < 0.6 * H * W  # the mask did drop cells
