"""End-to-end training through differentiable RANSAC: DSAC*'s expected pose loss and its gradient.

The analytic gradient of the native core is compared with central finite differences of the
expected loss itself (fixed seeds keep the sampled cells and inlier sets fixed, so the loss is
smooth near a generic point), for RGB and RGB-D, on small synthetic maps.
"""
import numpy as np
import pytest
import torch

from transpose import _core
from transpose import geometry as g
from transpose import ransac
from transpose.losses import dsac_pose_loss

H, W, STRIDE, FOCAL = 12, 16, 8, 110.0  # 192 cells, a 128 x 96 image


def small_frame(seed, outliers=0.15, noise_px=1.0, depth_noise=0.0):
    """Coordinate map (3, H, W) float64, K, T_c2w, camera points (3, H, W) (with depth noise)."""
    rng = np.random.default_rng(seed)
    K = g.intrinsics_from_focal(FOCAL, W * STRIDE, H * STRIDE)
    T = g.make_pose(g.rvec_to_rotmat(rng.normal(scale=0.5, size=3)), rng.normal(size=3))
    pixels = g.cell_centers(H, W, STRIDE).reshape(-1, 2)
    depth = rng.uniform(1.0, 4.0, size=len(pixels))
    seen = pixels + rng.normal(scale=noise_px, size=pixels.shape)
    cam = np.c_[(seen - K[:2, 2]) / FOCAL * depth[:, None], depth]
    world = g.transform_points(T, cam)
    bad = rng.random(len(pixels)) < outliers
    world[bad] += rng.normal(scale=0.5, size=(int(bad.sum()), 3))
    cam_obs = cam + rng.normal(scale=depth_noise, size=cam.shape)
    return world.T.reshape(3, H, W).copy(), K, T, cam_obs.T.reshape(3, H, W).copy()


OPTS = dict(num_hypotheses=16, alpha=20.0, min_probability=0.0, seed=3)


def expected_loss(coords, K, T, **kw):
    losses, _, _ = ransac.dsac_loss_numpy(coords[None], K, T, gradient=False, **{**OPTS, **kw})
    return float(losses[0])


def check_gradient(coords, K, T, rtol, **kw):
    losses, grad, info = ransac.dsac_loss_numpy(coords[None], K, T, **{**OPTS, **kw})
    grad, d = grad[0], info[0]
    assert d["status"] == 0
    p = d["probabilities"]
    assert (p > 1e-3).sum() >= 2, "the test needs several hypotheses that matter"
    # cells: the solving cells of the likeliest hypotheses (P3P / Kabsch path), plus random cells
    # (refinement inliers and cells that only move the soft scores)
    top = np.argsort(-p)[:3]
    cells = list(d["samples"][top, :3].ravel()) + list(np.random.default_rng(0).choice(H * W, 12, replace=False))
    step = 1e-6
    checked = 0
    flat = coords.reshape(3, -1)
    for cell in dict.fromkeys(int(c) for c in cells):
        for axis in range(3):
            plus, minus = flat.copy(), flat.copy()
            plus[axis, cell] += step
            minus[axis, cell] -= step
            fd = (expected_loss(plus.reshape(3, H, W), K, T, **kw) - expected_loss(minus.reshape(3, H, W), K, T, **kw)) / (2 * step)
            an = grad.reshape(3, -1)[axis, cell]
            scale = max(abs(fd), 1e-3 * np.abs(grad).max())
            assert abs(an - fd) <= rtol * scale, f"cell {cell} axis {axis}: analytic {an:.6g} vs FD {fd:.6g}"
            checked += abs(fd) > 1e-3 * np.abs(grad).max()
    assert checked >= 10, "too few cells with a gradient to compare"


def test_pose_loss_matches_torch_and_its_gradient():
    rng = np.random.default_rng(1)
    for trial in range(4):
        T_gt = g.make_pose(g.rvec_to_rotmat(rng.normal(size=3)), rng.normal(size=3))
        scale = [0.01, 0.05, 0.3, 1.0][trial]  # below and above the soft clamp
        T_est = g.make_pose(g.rvec_to_rotmat(rng.normal(scale=scale, size=3)), rng.normal(scale=scale, size=3)) @ T_gt
        w2c, gt_w2c = g.invert_pose(T_est), g.invert_pose(T_gt)
        loss, grad = _core.pose_loss(w2c[:3, :3].copy(), w2c[:3, 3].copy(), gt_w2c[:3, :3].copy(), gt_w2c[:3, 3].copy())
        ref = dsac_pose_loss(torch.from_numpy(T_est)[None], torch.from_numpy(T_gt)[None])
        assert loss == pytest.approx(float(ref), rel=1e-6)
        # gradient w.r.t. the left perturbation (w, dt) of the world-to-camera pose
        for k in range(6):
            d = np.zeros(6)
            d[k] = 1e-6
            vals = []
            for sgn in (1, -1):
                R = g.rvec_to_rotmat(sgn * d[:3]) @ w2c[:3, :3]
                t = g.rvec_to_rotmat(sgn * d[:3]) @ w2c[:3, 3] + sgn * d[3:]
                vals.append(_core.pose_loss(R, t, gt_w2c[:3, :3].copy(), gt_w2c[:3, 3].copy())[0])
            assert grad[k] == pytest.approx((vals[0] - vals[1]) / 2e-6, rel=1e-4, abs=1e-4)


def test_forward_matches_ransac_training_mode():
    coords, K, T, _ = small_frame(0)
    _, _, info = ransac.dsac_loss_numpy(coords[None], K, T, gradient=False, **OPTS)
    d = info[0]
    r = ransac.estimate_pose(coords, K, training=True, refine_all=True, num_hypotheses=16, alpha=20.0, seed=3)
    np.testing.assert_array_equal(d["samples"], r.samples)
    np.testing.assert_allclose(d["logits"], r.logits, rtol=1e-12)
    # refined poses agree up to the extra polishing iterations on the final inlier set
    np.testing.assert_allclose(d["refined_t"], r.refined_t, atol=1e-6)
    p = np.exp(d["logits"] - d["logits"].max())
    np.testing.assert_allclose(d["probabilities"], p / p.sum(), rtol=1e-12)
    assert d["loss"] == pytest.approx(float((d["probabilities"] * d["losses"]).sum()), rel=1e-12)


def test_exact_map_has_near_zero_loss():
    coords, K, T, _ = small_frame(1, outliers=0.0, noise_px=0.0)
    losses, grad, _ = ransac.dsac_loss_numpy(coords[None], K, T, **OPTS)
    assert losses[0] < 1e-5
    assert np.isfinite(grad).all()


def test_gradient_matches_finite_differences_rgb():
    coords, K, T, _ = small_frame(2)
    check_gradient(coords, K, T, rtol=2e-3)


def test_gradient_matches_finite_differences_rgbd():
    coords, K, T, cam = small_frame(4, depth_noise=0.01)
    check_gradient(coords, K, T, rtol=2e-3, camera_coords=cam[None])


def test_gradient_with_soft_clamp_above_cut():
    # a 3 px noise map with a low cut: every hypothesis' loss is in the square-root branch
    coords, K, T, _ = small_frame(5, noise_px=3.0)
    _, _, info = ransac.dsac_loss_numpy(coords[None], K, T, gradient=False, cut=0.5, **OPTS)
    assert (info[0]["losses"][info[0]["probabilities"] > 0] > 0.5).all()
    check_gradient(coords, K, T, rtol=2e-3, cut=0.5)


def test_autograd_function_and_descent_lowers_the_loss():
    coords, K, T, _ = small_frame(6, noise_px=0.5)
    rng = np.random.default_rng(7)
    perturbed = coords + rng.normal(scale=0.02, size=coords.shape)  # 2 cm noise on the map
    x = torch.tensor(perturbed[None], requires_grad=True)
    loss = ransac.dsac_loss(x, K, T, **OPTS)
    loss.backward()
    _, grad, _ = ransac.dsac_loss_numpy(perturbed[None], K, T, **OPTS)
    np.testing.assert_allclose(x.grad.numpy(), grad, rtol=1e-12)
    first = float(loss.detach())
    optimizer = torch.optim.Adam([x], lr=2e-3)
    for _ in range(15):
        optimizer.zero_grad()
        loss = ransac.dsac_loss(x, K, T, **OPTS)
        loss.backward()
        optimizer.step()
    final = float(ransac.dsac_loss(x.detach(), K, T, **OPTS))
    assert final < 0.5 * first, f"expected loss {first:.4g} -> {final:.4g}"


def test_batch_and_threads_agree_with_single_frames():
    frames = [small_frame(s) for s in (8, 9)]
    coords = np.stack([f[0] for f in frames])
    Ts = np.stack([f[2] for f in frames])
    losses, grad, _ = ransac.dsac_loss_numpy(coords, frames[0][1], Ts, seed=[3, 4], num_threads=2,
                                              **{k: v for k, v in OPTS.items() if k != "seed"})
    for b, s in enumerate((3, 4)):
        l1, g1, _ = ransac.dsac_loss_numpy(coords[b:b + 1], frames[0][1], Ts[b], seed=s, num_threads=1,
                                           **{k: v for k, v in OPTS.items() if k != "seed"})
        assert losses[b] == pytest.approx(l1[0], rel=1e-12)
        np.testing.assert_allclose(grad[b], g1[0], rtol=1e-9, atol=1e-12)


def test_bad_input_raises():
    coords, K, T, _ = small_frame(0)
    with pytest.raises(ValueError, match="gt_pose"):
        ransac.dsac_loss_numpy(coords[None], K, T[:3])
    with pytest.raises(ValueError, match="coords"):
        ransac.dsac_loss_numpy(coords, K, T)
    with pytest.raises(ValueError, match="cut"):
        ransac.dsac_loss_numpy(coords[None], K, T, cut=0.0)


# --------------------------------------------------------------------------- train_e2e command

@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    """A two-frame rendered scene with depth and a (briefly trained) train_init network."""
    import shutil

    from transpose import cli
    from transpose.data import layout
    from transpose.data.synthetic import render_scene

    root = tmp_path_factory.mktemp("e2e")
    render_scene(root / "tiny", "indoor", frames=4, width=160, height=120, seed=0, progress=False)
    for section in ("train", "test"):
        for folder in ("rgb", "poses", "calibration", "depth"):
            src = layout.section_dir(root / "tiny", "train_sim") / folder
            dst = root / "pair" / section / folder
            dst.mkdir(parents=True)
            for f in sorted(src.iterdir())[:2]:
                shutil.copy(f, dst / f.name)
    init = root / "init.net"
    assert cli._run("train_init", [str(root / "pair"), str(init), "--iterations", "5", "--width", "0.25",
                                   "--no_augment", "--learningrate", "3e-3", "--mode", "2",
                                   "--image_height", "64"]) == 0
    return root


def test_train_e2e_command_checkpoints_resumes_and_tests(tiny_scene):
    from transpose import cli
    from transpose.train.checkpoint import load_checkpoint
    from transpose.train.logger import read_csv_log
    from transpose.train.scr import load_network

    pair, init, out = tiny_scene / "pair", tiny_scene / "init.net", tiny_scene / "e2e.net"
    common = [str(pair), str(init), str(out), "--hypotheses", "8", "--checkpoint_every", "2"]
    assert cli._run("train_e2e", common + ["--iterations", "2"]) == 0
    assert cli._run("train_e2e", common + ["--iterations", "4", "--resume"]) == 0
    ckpt = load_checkpoint(out, "scr")
    assert ckpt["iteration"] == 4
    assert ckpt["options"]["train_e2e"]["learningrate"] == 1e-6
    assert ckpt["options"]["image_height"] == 64  # taken from the initial network
    net, _ = load_network(out, "cpu")
    log = read_csv_log(tiny_scene / "e2e_log" / "log.csv")
    assert np.isfinite(log["loss"]).all() and min(log["loss"]) >= 0
    assert {"frames_ok", "lr"} <= set(log)
    # RGB-D: Kabsch hypotheses on the depth targets' camera points
    assert cli._run("train_e2e", [str(pair), str(init), str(tiny_scene / "e2e_rgbd.net"), "--mode", "2",
                                  "--hypotheses", "8", "--iterations", "2"]) == 0
    assert cli._run("test", [str(pair), str(out), "--section", "test", "--out", str(tiny_scene / "out")]) == 0


def test_train_e2e_command_errors(tiny_scene, capsys):
    from transpose import cli

    code = cli._run("train_e2e", [str(tiny_scene / "pair"), str(tiny_scene / "missing.net"), str(tiny_scene / "x.net")])
    assert code == 2
    assert "missing.net" in capsys.readouterr().err


def test_skipping_unlikely_hypotheses_and_threads():
    coords, K, T, _ = small_frame(10, outliers=0.4)
    kw = dict(num_hypotheses=32, seed=1)  # alpha 100: a few hypotheses dominate
    exact = ransac.dsac_loss_numpy(coords[None], K, T, min_probability=0.0, **kw)
    skip = ransac.dsac_loss_numpy(coords[None], K, T, min_probability=1e-6, **kw)
    info = skip[2][0]
    valid = int(np.isfinite(info["logits"]).sum())
    assert info["backward_hypotheses"] == int((info["probabilities"] >= 1e-6).sum()) < valid
    assert exact[2][0]["backward_hypotheses"] == valid
    assert skip[0][0] == exact[0][0]  # the loss itself is never truncated
    np.testing.assert_allclose(skip[1], exact[1], atol=1e-4 * np.abs(exact[1]).max())
    # threads over hypotheses: the same gradient up to the order of the sums
    two = ransac.dsac_loss_numpy(coords[None], K, T, min_probability=0.0, num_threads=2, **kw)
    np.testing.assert_allclose(two[1], exact[1], rtol=1e-9, atol=1e-12 * np.abs(exact[1]).max())
    again = ransac.dsac_loss_numpy(coords[None], K, T, min_probability=0.0, num_threads=2, **kw)
    np.testing.assert_array_equal(again[1], two[1])
