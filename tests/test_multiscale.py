"""Multi-scale testing: cells of zoomed forward passes placed in the original image and pooled into one RANSAC."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transpose import cli, geometry
from transpose.evaluate import RansacOptions, ZoomedCells, check_scales, solve_pooled, zoomed_cells

H, W = 120, 160
K = geometry.intrinsics_from_focal(130.0, W, H)


def _ramp_image() -> torch.Tensor:
    """``(2, H, W)``: each pixel holds its own position ``(x, y)`` in the continuous convention the
    bilinear warp samples in (pixel index i is centred at i + 0.5), so that any zoom of it shows,
    pooled over a cell, where that cell came from."""
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32) + 0.5, torch.arange(W, dtype=torch.float32) + 0.5,
                            indexing="ij")
    return torch.stack([xs, ys])


class OracleNet(torch.nn.Module):
    """A stand-in network for the ramp image: a cell's mean ramp value is the pixel it sees; it
    returns the scene point there on a tilted plane seen from ``pose`` (camera-to-world), sigma 1."""

    def __init__(self, pose: np.ndarray):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # zoomed_cells asks the network for its device
        self.pose = torch.as_tensor(pose)
        self.seen = []

    def depth(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 2.0 + 0.004 * x - 0.002 * y

    def forward(self, image: torch.Tensor):
        pixel = F.avg_pool2d(image.double(), 8)[0]          # (2, h, w)
        self.seen.append(pixel)
        x, y = pixel
        z = self.depth(x, y)
        cam = torch.stack([(x - K[0, 2]) / K[0, 0] * z, (y - K[1, 2]) / K[1, 1] * z, z]).reshape(3, -1)
        world = self.pose[:3, :3] @ cam + self.pose[:3, 3:]
        return world.reshape(1, 3, *pixel.shape[1:]).float(), torch.ones(1, 1, *pixel.shape[1:])


def _pose() -> np.ndarray:
    R = geometry.rvec_to_rotmat(np.array([0.1, -0.3, 0.05]))
    return geometry.make_pose(R, np.array([0.4, -0.2, 1.1]))


def test_zoomed_cells_sit_where_the_warp_took_them_from():
    net = OracleNet(_pose())
    image = _ramp_image()
    with torch.no_grad():
        own_coords, _ = net(image[None])
    # at scale 1 a cell's mean ramp value is its centre (8j + 4, 8i + 4), the convention of every map
    assert torch.allclose(net.seen[-1].permute(1, 2, 0), torch.from_numpy(geometry.cell_centers(15, 20)), atol=1e-4)
    for scale in (1.25, 1.5, 2.0):
        with torch.no_grad():
            cells = zoomed_cells(net, image, K, scale)
        h, w = cells.coords.shape[1:]
        # a canvas of whole cells that covers the zoomed image, centred on it
        assert (h, w) == (math.ceil(H * scale / 8), math.ceil(W * scale / 8))
        seen = net.seen[-1].permute(1, 2, 0).numpy()
        # inside: exact; the outermost cells' patches reach past the image edge, where the edge pixels
        # repeat (as an image zoom should: no dark rim), so that the ramp stops growing there
        assert np.abs(cells.pixels - seen)[1:-1, 1:-1].max() < 1e-3, scale
        assert np.abs(cells.pixels - seen).max() < 0.5, scale
        # a zoom about the centre: cell pitch 8 / scale in the original image, centred on it
        assert np.allclose(np.diff(cells.pixels[0, :, 0]), 8.0 / scale)
        assert abs(cells.pixels[..., 0].mean() - W / 2) < 1e-6 and abs(cells.pixels[..., 1].mean() - H / 2) < 1e-6
        assert cells.sigma.shape == (h, w)


@pytest.mark.parametrize("rgbd", [False, True])
def test_pooled_cells_give_the_exact_pose(rgbd):
    pose = _pose()
    net = OracleNet(pose)
    image = _ramp_image()
    with torch.no_grad():
        coords, sigma = net(image[None])
        passes = [ZoomedCells(coords[0].double().numpy(), sigma[0, 0].double().numpy(), geometry.cell_centers(15, 20))]
        # the zooms' outermost cells see repeated edge pixels, where the ramp (and so the oracle) stops
        passes += [ZoomedCells(c.coords[:, 1:-1, 1:-1], c.sigma[1:-1, 1:-1], c.pixels[1:-1, 1:-1])
                   for c in (zoomed_cells(net, image, K, s) for s in (1.5, 2.0))]
    depth = None
    if rgbd:  # the image's depth, pixel (x, y) at index [y, x]
        ys, xs = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
        depth = net.depth(torch.from_numpy(xs), torch.from_numpy(ys)).numpy()
    for use in ("none", "weight", "drop"):
        result = solve_pooled(passes, K, RansacOptions(uncertainty=use, seed=1), depth=depth)
        rot, trans = geometry.pose_errors(result.pose, pose)
        # RGB-D reads depth at the nearest pixel (up to half a pixel from a zoomed cell's centre)
        assert trans < (0.01 if rgbd else 1e-4) and rot < (0.1 if rgbd else 1e-3), (use, rot, trans)
        n = sum(p.coords[0].size for p in passes)
        assert result.inliers.shape == (n,)
        assert result.num_inliers > (0.4 if use == "drop" else 0.9) * n


def test_pooled_cells_beat_one_pass_when_their_errors_differ():
    """Each pass's points carry their own noise; pooled, the pose error falls (mean over 20 frames)."""
    pose = _pose()
    net = OracleNet(pose)
    image = _ramp_image()
    rng = np.random.default_rng(0)
    one, pooled = [], []
    with torch.no_grad():
        clean = [ZoomedCells(net(image[None])[0][0].double().numpy(), None, geometry.cell_centers(15, 20)),
                 zoomed_cells(net, image, K, 1.5)]
    opts = RansacOptions(seed=0)
    for _ in range(20):
        noisy = [ZoomedCells(c.coords + rng.normal(scale=0.03, size=c.coords.shape), None, c.pixels) for c in clean]
        one.append(geometry.pose_errors(solve_pooled(noisy[:1], K, opts).pose, pose)[1])
        pooled.append(geometry.pose_errors(solve_pooled(noisy, K, opts).pose, pose)[1])
    # 300 + 660 cells against 300: the error should shrink by about sqrt(960 / 300) ~ 1.8
    assert np.mean(pooled) < 0.75 * np.mean(one)


def test_scales_are_checked_with_a_clear_line(capsys):
    assert check_scales([1.5, 1]) == (1.0, 1.5)
    for bad, message in (([1.5], "must include 1"), ([1, 0.75], "0.75 is not a zoom >= 1"),
                         ([1, 1.5, 1.5], "listed twice"), ([1, math.nan], "nan is not a zoom")):
        with pytest.raises(ValueError, match=message):
            check_scales(bad)
    for text, message in (("1.5", "--scales [1.5]: must include 1"), ("1,x", "--scales must be a comma list of numbers, got '1,x'"),
                          ("1,0.5", "--scales: 0.5 is not a zoom >= 1")):
        with pytest.raises(SystemExit):
            cli.test_parser().parse_args(["scene", "net.net", "--scales", text])
        assert message in capsys.readouterr().err
    assert cli.test_parser().parse_args(["scene", "net.net", "--scales", "1,1.5"]).scales == (1.0, 1.5)
    assert cli.test_parser().parse_args(["scene", "net.net"]).scales == "auto"
