"""Augmentation primitives: the virtual camera, image warps, nearest lookups, photometric jitter."""
import math

import numpy as np
import pytest
import torch

from transpose import geometry as g
from transpose.data import augment as A


def test_view_transform_maps_pixels_on_the_same_ray():
    """For any K (fx != fy, off-centre principal point), a world point projects to p_in in the input
    camera and to p_out in the virtual one, with p_in = M @ p_out (to 1e-9 px)."""
    rng = np.random.default_rng(0)
    K = g.intrinsics_matrix(500.0, 430.0, 300.0, 260.0)
    T = g.make_pose(g.rvec_to_rotmat(rng.normal(size=3)), rng.normal(size=3))
    view = A.view_transform(K, (480, 640), scale=1.3, angle_deg=25.0, size_out=(400, 500))
    X_cam = np.c_[rng.uniform(-1, 1, (50, 2)), rng.uniform(2, 5, 50)]
    X = g.transform_points(T, X_cam)
    p_in, z_in = g.project(X, T, K)
    p_out, z_out = g.project(X, view.pose(T), view.K)
    assert np.abs(A.map_points(view.M, p_out) - p_in).max() < 1e-9
    assert np.allclose(z_in, z_out)  # rotation about z keeps depth
    assert view.size == (400, 500)
    assert np.isclose(view.K[0, 0], 650.0) and np.isclose(view.K[1, 1], 559.0)
    # the optical axis is kept; the camera turned by exactly the angle
    R_rel = view.pose(T)[:3, :3].T @ T[:3, :3]
    assert np.isclose(g.rotation_error_deg(R_rel, np.eye(3)), 25.0)


def test_view_transform_default_size_and_identity():
    K = g.intrinsics_from_focal(100.0, 64, 48)
    assert A.view_transform(K, (48, 64)).is_identity
    v = A.view_transform(K, (48, 64), scale=0.5)
    assert v.size == (24, 32) and np.allclose(v.K, g.intrinsics_from_focal(50.0, 32, 24))
    with pytest.raises(ValueError, match="scale must be positive"):
        A.view_transform(K, (48, 64), scale=0.0)


def test_warp_image_identity_shift_and_rotation():
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.random((2, 12, 16)).astype(np.float32))
    assert torch.allclose(A.warp_image(img, np.eye(3), (12, 16)), img, atol=1e-6)
    # a shift by whole pixels moves the content, zeros come in from outside
    M = np.array([[1.0, 0, 3], [0, 1, -2], [0, 0, 1]])
    out = A.warp_image(img, M, (12, 16))
    assert torch.allclose(out[:, 2:, :13], img[:, :10, 3:], atol=1e-6)
    assert torch.all(out[:, :2] == 0) and torch.all(out[:, :, 13:] == 0)
    # a 90 degree turn about the image centre is a transpose-and-flip of a square image
    sq = img[:, :12, :12]
    c = 6.0
    M90 = np.array([[0.0, -1, 2 * c], [1, 0, 0], [0, 0, 1]])  # p_in = (12 - y, x)
    out = A.warp_image(sq, M90, (12, 12))
    assert torch.allclose(out, torch.flip(sq, dims=[2]).transpose(1, 2), atol=1e-5)


def test_sample_nearest_strides_and_validity():
    vals = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    pts = np.array([[0.0, 0.0], [7.99, 7.99], [8.0, 16.0], [31.9, 23.9], [32.0, 0.0], [-0.1, 4.0], [np.nan, 1.0]])
    out, ok = A.sample_nearest(vals, pts, stride=8)
    assert ok.tolist() == [True, True, True, True, False, False, False]
    assert out[0, :4].tolist() == [0, 0, vals[0, 2, 1], vals[0, 2, 3]]
    assert np.all(out[:, ~ok] == 0)
    valid = np.ones((3, 4), bool)
    valid[2, 1] = False
    out, ok = A.sample_nearest(vals, pts, stride=8, valid=valid)
    assert ok.tolist()[2] is False and out[1, 2] == 0


def test_brightness_contrast():
    img = torch.tensor([[[0.2, 0.4], [0.6, 0.8]]])
    assert torch.allclose(A.adjust_brightness_contrast(img, 1.5, 1.0), torch.tensor([[[0.3, 0.6], [0.9, 1.0]]]))
    out = A.adjust_brightness_contrast(img, 1.0, 0.5)  # halfway to the mean 0.5
    assert torch.allclose(out, torch.tensor([[[0.35, 0.45], [0.55, 0.65]]]))
    rgb = torch.rand(3, 4, 4)
    assert torch.equal(A.adjust_brightness_contrast(rgb), rgb)


def test_sample_augmentation_ranges_and_params_checks():
    p = A.AugmentParams(scale_min=0.5, scale_max=2.0, rotation_deg=20, brightness=0.1, contrast=0.2)
    gen = torch.Generator().manual_seed(0)
    draws = [A.sample_augmentation(p, gen) for _ in range(400)]
    s = np.array([d["scale"] for d in draws])
    a = np.array([d["angle_deg"] for d in draws])
    assert s.min() >= 0.5 and s.max() <= 2.0 and abs(np.median(np.log(s))) < 0.15  # log-uniform: median ~1
    assert np.abs(a).max() <= 20 and a.min() < -15 and a.max() > 15
    assert all(0.9 <= d["brightness"] <= 1.1 and 0.8 <= d["contrast"] <= 1.2 for d in draws)
    with pytest.raises(ValueError, match="scale range"):
        A.AugmentParams(scale_min=2.0, scale_max=1.0)
    with pytest.raises(ValueError, match="< 1"):
        A.AugmentParams(brightness=1.5)


def test_rotation_z_is_about_the_optical_axis():
    R = A.rotation_z(30.0)
    assert np.allclose(R @ [0, 0, 1], [0, 0, 1]) and np.isclose(g.rotation_error_deg(R, np.eye(3)), 30.0)
    assert np.allclose(R @ [1, 0, 0], [math.cos(math.radians(30)), math.sin(math.radians(30)), 0])


def test_relight_gain_per_cell_interpolation_and_cells_without_normals():
    image = np.full((1, 16, 24), 0.5, np.float32)
    normals = np.zeros((3, 2, 3), np.float32)
    normals[:, 0, 0] = [0, 0, 1]    # faces the light: gain 1 + s
    normals[:, 0, 1] = [0, 0, -1]   # faces away: gain 1 - s
    normals[:, 1, 0] = [1, 0, 0]    # grazing: gain 1 - s
    # (0, 2), (1, 1), (1, 2): no normal, left as they are
    out = A.relight_image(image, normals, np.array([0.0, 0.0, 1.0]), 0.4, stride=8)
    # cell (i, j) is centred on pixel (8 j + 4, 8 i + 4), as geometry.cell_centers
    assert np.isclose(out[0, 4, 4], 0.7) and np.isclose(out[0, 0, 0], 0.7)  # 1.4 x 0.5, held to the border
    assert np.isclose(out[0, 4, 12], 0.3) and np.isclose(out[0, 12, 4], 0.3)
    assert np.allclose(out[0, 12:16, 20:24], 0.5)
    # bilinear between the centres of cells (0, 0) and (0, 1): halfway, at x = 8, the mean gain 1.0
    assert np.isclose(out[0, 4, 8], 0.5) and np.isclose(out[0, 4, 6], 0.5 * (0.75 * 1.4 + 0.25 * 0.6))
    assert out.dtype == np.float32 and out.max() <= 1.0
    # strength 0: nothing changes; and the gain saturates at 1
    assert np.array_equal(A.relight_image(image, normals, np.array([0.0, 0.0, 1.0]), 0.0), image)
    bright = A.relight_image(np.ones_like(image), normals, np.array([0.0, 0.0, 1.0]), 0.9)
    assert bright.max() == 1.0


def test_sample_augmentation_draws_relighting_only_when_asked():
    plain = A.AugmentParams()
    lit = A.AugmentParams(relight=0.5)
    a = A.sample_augmentation(plain, torch.Generator().manual_seed(3))
    b = A.sample_augmentation(lit, torch.Generator().manual_seed(3))
    assert set(a) == {"scale", "angle_deg", "brightness", "contrast"}
    assert all(a[k] == b[k] for k in a)  # the same geometric and photometric draws as before
    assert 0 <= b["relight"] <= 0.5 and abs(np.linalg.norm(b["light"]) - 1) < 1e-9
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="relight"):
            A.AugmentParams(relight=bad)


def test_dataset_relights_images_only(tmp_path):
    """Relit items keep the geometry of the same augmentation draw (pose, K, targets); only the grey
    levels change, and only on frames with normal maps."""
    from transpose.data.scene import SceneDataset
    from transpose.data.synthetic import render_scene

    render_scene(tmp_path / "s", "indoor", frames=8, width=160, height=120, seed=0, progress=False)
    aug = A.AugmentParams(relight=0.9)
    lit = SceneDataset(tmp_path / "s", "train_sim", augment=True, aug=aug, load_normals=False)
    base = SceneDataset(tmp_path / "s", "train_sim", augment=True, aug=A.AugmentParams(), load_normals=False)
    assert "normals" not in lit[0]  # read for relighting, not returned
    torch.manual_seed(5)
    a = lit[1]
    torch.manual_seed(5)
    b = base[1]
    for key in ("pose", "K", "coords", "mask"):
        assert torch.equal(a[key], b[key]), key
    assert (a["image"] - b["image"]).abs().mean() > 0.01
    for p in (tmp_path / "s" / "train_sim" / "normal").iterdir():
        p.unlink()
    (tmp_path / "s" / "train_sim" / "normal").rmdir()
    bare = SceneDataset(tmp_path / "s", "train_sim", augment=True, aug=aug, load_normals=False)
    torch.manual_seed(5)
    c = bare[1]
    assert torch.equal(c["image"], b["image"])


def test_shadow_darkens_inside_the_polygon_only():
    image = np.full((1, 40, 40), 0.8, np.float32)
    square = np.array([[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]])  # counter-clockwise in (x, y)
    out = A.apply_shadow(image, square, darkness=0.5, softness=0.01)
    assert np.isclose(out[0, 20, 20], 0.4)                      # inside: 1 - darkness
    assert np.isclose(out[0, 2, 2], 0.8) and np.isclose(out[0, 20, 38], 0.8)
    # the left edge is at x = 10 px; pixel 10's centre lies 0.5 px inside it. With a 2 px ramp
    # (softness 0.05 of 40 px) it is 3/4 of the way in: 0.8 * (1 - 0.5 * 0.75)
    soft = A.apply_shadow(image, square, darkness=0.5, softness=0.05)
    assert np.isclose(soft[0, 20, 10], 0.5) and np.isclose(soft[0, 20, 9], 0.8 * (1 - 0.5 * 0.25))
    # drawn shadows are valid convex polygons (any vertex order the sampler makes)
    params = A.AugmentParams(shadow=1.0)
    for seed in range(20):
        vertices, darkness, softness = A.sample_augmentation(params, torch.Generator().manual_seed(seed))["shadow"]
        centre = vertices.mean(axis=0)
        out = A.apply_shadow(np.ones((1, 50, 50), np.float32), vertices, darkness, 1e-6)
        cx, cy = int(centre[0] * 50), int(centre[1] * 50)
        if 0 <= cx < 50 and 0 <= cy < 50:
            assert np.isclose(out[0, cy, cx], 1 - darkness, atol=1e-5)
        assert 0.3 <= darkness <= 0.8 and 3 <= len(vertices) <= 5
    assert not {"shadow", "camera"} & set(A.sample_augmentation(A.AugmentParams()))  # off: nothing drawn


def test_camera_effects_each_term():
    flat = np.full((1, 30, 40), 0.5, np.float32)
    assert np.array_equal(A.camera_effects(flat), flat)
    # blur keeps a flat image flat and spreads an edge
    assert np.allclose(A.camera_effects(flat, blur_px=1.0), 0.5)
    edge = np.zeros((1, 30, 40), np.float32)
    edge[:, :, 20:] = 1.0
    blurred = A.camera_effects(edge, blur_px=1.0)
    assert 0.05 < blurred[0, 15, 19] < 0.5 < blurred[0, 15, 20] < 0.95
    # vignetting: the centre stays, the corners darken by about vignette / 2 * r^2 (r^2 ~ 2)
    vig = A.camera_effects(flat, vignette=0.3)
    assert abs(vig[0, 15, 20] - 0.5) < 0.01 and abs(vig[0, 0, 0] - 0.5 * (1 - 0.3)) < 0.02
    assert np.isclose(A.camera_effects(flat, gamma=2.0)[0, 0, 0], 0.25)
    noisy = A.camera_effects(flat, noise=0.05, seed=3)
    assert abs(noisy.std() - 0.05) < 0.005 and np.array_equal(noisy, A.camera_effects(flat, noise=0.05, seed=3))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="camera"):
            A.AugmentParams(camera=bad)
        with pytest.raises(ValueError, match="shadow"):
            A.AugmentParams(shadow=bad)
