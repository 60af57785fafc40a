import math

import numpy as np
import pytest
import torch

from transpose import geometry as g
from transpose.losses import InitLossConfig, reprojection_errors, scr_init_loss, uncertainty_nll
from transpose.models.scr import SCRNet, output_size


def exact_scene(B=2, h=6, w=8, seed=0, skew=0.0):
    """Coordinates back-projected from random depths: exact targets for known poses."""
    rng = np.random.default_rng(seed)
    K = g.intrinsics_matrix(50.0, 52.0, 31.0, 25.0)
    K[0, 1] = skew
    poses, coords = [], []
    for _ in range(B):
        T = g.make_pose(g.rvec_to_rotmat(rng.normal(size=3) * 0.3), rng.normal(size=3))
        depth = rng.uniform(1.0, 3.0, size=(h, w))
        pts = g.backproject_depth(depth, K, T, pixels=g.cell_centers(h, w, 8))
        poses.append(T)
        coords.append(pts.transpose(2, 0, 1))
    f = lambda a: torch.tensor(np.stack(a), dtype=torch.float64)
    return f(coords), f(poses), torch.tensor(K)[None].repeat(B, 1, 1)


def test_network_shapes_and_options():
    net = SCRNet(scene_center=[1.0, 2.0, 3.0], width=0.25, uncertainty=True)
    coords, sigma = net(torch.zeros(2, 1, 60, 84))
    assert coords.shape == (2, 3, 8, 11) == (2, 3) + output_size(60, 84)
    assert sigma.shape == (2, 1, 8, 11) and (sigma > 0).all()
    clone = SCRNet.from_options(net.options())
    clone.load_state_dict(net.state_dict())
    assert torch.equal(clone(torch.ones(1, 1, 16, 16))[0], net(torch.ones(1, 1, 16, 16))[0])
    # the scene centre is an offset of the output
    moved = SCRNet.from_options({**net.options(), "scene_center": [0.0, 0.0, 0.0]})
    moved.load_state_dict({**net.state_dict(), "scene_center": torch.zeros(3)})
    diff = net(torch.ones(1, 1, 16, 16))[0] - moved(torch.ones(1, 1, 16, 16))[0]
    assert torch.allclose(diff, torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1).expand_as(diff))
    with pytest.raises(ValueError, match=r"expects images \(B, C, H, W\)"):
        net(torch.zeros(1, 16, 16))


def test_reprojection_error_zero_for_exact_coordinates():
    coords, T, K = exact_scene()
    err, depth = reprojection_errors(coords, T, K)
    assert err.max() < 1e-9 and depth.min() >= 1.0 - 1e-9
    # a point moved 0.1 m sideways at 2 m depth moves ~ f * 0.05 px
    shifted = coords.clone()
    R = T[0, :3, :3]
    shifted[0, :, 0, 0] += R[:, 0] * 0.1  # along the camera's x axis
    err2, _ = reprojection_errors(shifted, T, K)
    z = depth[0, 0, 0].item()
    assert abs(err2[0, 0, 0].item() - 50.0 * 0.1 / z) < 1e-6
    # a skewed camera: exact coordinates still reproject exactly, and so do constant-depth targets
    from transpose.losses import constant_depth_target

    coords, T, K = exact_scene(skew=4.0)
    assert reprojection_errors(coords, T, K)[0].max() < 1e-9
    err3, depth3 = reprojection_errors(constant_depth_target(T, K, 6, 8, depth=2.5), T, K)
    assert err3.max() < 1e-9 and torch.allclose(depth3, torch.full_like(depth3, 2.5))


def test_init_loss_modes():
    coords, T, K = exact_scene()
    mask = torch.ones(coords.shape[0], coords.shape[2], coords.shape[3], dtype=torch.bool)
    for mode in (1, 2):
        loss, stats = scr_init_loss(coords, T, K, coords, mask, InitLossConfig(mode=mode))
        assert loss.item() < 1e-9 and stats["valid"].item() == 1.0
    # far from targets (> inittolerance): the 3D distance is used, 0.5 m per cell
    off = coords + torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1)
    loss, stats = scr_init_loss(off, T, K, coords, mask, InitLossConfig(mode=1))
    assert abs(loss.item() - 0.5) < 1e-9 and stats["valid"].item() == 0.0
    # soft clamp: an error e above the clamp costs sqrt(clamp * e)
    cfg = InitLossConfig(mode=1, softclamp=1.0, inittolerance=10.0)
    err, _ = reprojection_errors(off, T, K)
    loss, _ = scr_init_loss(off, T, K, coords, mask, cfg)
    expected = torch.where(err <= 1.0, err, torch.sqrt(err)).mean()
    assert abs(loss.item() - expected.item()) < 1e-9
    # mode 0 (RGB only): exact constant-depth targets give zero loss
    loss0, _ = scr_init_loss(coords, T, K, None, None, InitLossConfig(mode=0))
    assert loss0.item() > 0
    with pytest.raises(ValueError, match="mode 1 needs coordinate targets"):
        scr_init_loss(coords, T, K, None, None, InitLossConfig(mode=1))


def test_uncertainty_nll_matches_hand_computation():
    coords = torch.tensor([[[[1.0, 0.0]], [[2.0, 0.0]], [[2.0, 0.0]]]])  # (1, 3, 1, 2)
    target = torch.zeros_like(coords)
    sigma = torch.tensor([[[[0.5, 2.0]]]])
    mask = torch.tensor([[[True, True]]])
    # cell 0: |d|^2 = 9, sigma 0.5 -> 3 ln 0.5 + 9 / 0.5 = -2.0794 + 18; cell 1: 3 ln 2 + 0
    expected = ((3 * math.log(0.5) + 9 / (2 * 0.25)) + 3 * math.log(2.0)) / 2
    assert abs(uncertainty_nll(coords, sigma, target, mask).item() - expected) < 1e-5
    # the optimum sigma for an error d is d / sqrt(3)
    s = torch.tensor([[[[3.0 / math.sqrt(3.0)]]]], requires_grad=True)
    nll = uncertainty_nll(coords[..., :1], s, target[..., :1], mask[..., :1])
    nll.backward()
    assert abs(s.grad.item()) < 1e-5
