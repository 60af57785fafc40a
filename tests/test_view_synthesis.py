"""Novel views from depth (augmentation): the re-rendered view against the renderer's own view of
the new pose, the aimed camera, and the dataset's targets in the new view."""
import numpy as np
import pytest
import torch

from transpose import geometry as g
from transpose.data import augment as A
from transpose.data import synthetic


@pytest.fixture(scope="module")
def indoor():
    """The built-in indoor scene at 160x120 and one view of it (grey image, depth, K, pose)."""
    width, height = 160, 120
    scene = synthetic.build_scene("indoor", seed=0, width=width)
    K = synthetic.intrinsics(width, height)
    T = synthetic.trajectory("indoor", "train", 40, seed=0)[7]
    view = synthetic.render_view(scene, T, K, width, height, look="sim")
    grey = _grey(view["rgb"]).astype(np.uint8)[:, :, None]
    return scene, K, T, grey, view["depth"].astype(np.float32), (width, height), view["normals"]


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.round(rgb.astype(np.float64) @ [0.299, 0.587, 0.114])


def test_nearby_view_moves_the_centre_and_keeps_the_aim():
    rng = np.random.default_rng(0)
    T = g.make_pose(g.rvec_to_rotmat(rng.normal(size=3)), rng.normal(size=3))
    shift, reach = np.array([0.3, -0.2, 0.1]), 2.5
    T_new = A.nearby_view(T, shift, reach)
    assert g.is_rigid(T_new, tol=1e-9)
    assert np.allclose(T_new[:3, 3], T[:3, 3] + T[:3, :3] @ shift, atol=1e-12)
    aim = g.transform_points(T, np.array([0.0, 0.0, reach]))
    in_new = g.transform_points(g.invert_pose(T_new), aim)
    assert np.allclose(in_new[:2], 0.0, atol=1e-12) and in_new[2] > 0   # on the new principal ray, in front
    # no shift: the same camera
    assert np.allclose(A.nearby_view(T, np.zeros(3), reach), T, atol=1e-12)


def test_synthesize_view_same_pose_is_the_identity(indoor):
    _, K, T, grey, depth, _, _ = indoor
    image, d, source = A.synthesize_view(grey, depth, K, T, T)
    seen = depth > 0
    assert np.array_equal(d > 0, seen)
    assert np.allclose(d[seen], depth[seen], atol=1e-4)                 # depth in 0.1 mm steps
    assert np.array_equal(image[seen], grey[seen])
    rows, cols = np.nonzero(seen)
    assert np.array_equal(source[seen], np.c_[cols, rows]) and np.isnan(source[~seen]).all()
    # a skewed K back-projects and projects through the same matrix: still the identity
    skewed = K.copy()
    skewed[0, 1] = 6.0
    _, d_skew, _ = A.synthesize_view(grey, depth, skewed, T, T)
    assert np.allclose(d_skew[seen], depth[seen], atol=1e-4) and np.array_equal(d_skew > 0, seen)


def test_synthesize_view_matches_a_render_of_the_new_pose(indoor):
    """Moved 0.3 m and turned to keep its aim, the splatted view agrees with the renderer's own view
    of the new pose: depth to a millimetre on almost every pixel both see, grey levels to a few
    levels, the surface normals carried over from where each pixel came from, and what the old
    view never saw is marked unseen (depth 0)."""
    scene, K, T, grey, depth, (width, height), normals = indoor
    reach = float(np.median(depth[depth > 0]))
    T_new = A.nearby_view(T, np.array([0.25, -0.1, 0.15]), reach)
    image, d, source = A.synthesize_view(grey, depth, K, T, T_new)
    truth = synthetic.render_view(scene, T_new, K, width, height, look="sim")
    both = (d > 0) & (truth["depth"] > 0)
    assert both.mean() > 0.8
    depth_err = np.abs(d[both] - truth["depth"][both])
    assert np.median(depth_err) < 2e-3 and np.mean(depth_err > 0.05) < 0.01
    grey_err = np.abs(image[..., 0].astype(np.float64) - _grey(truth["rgb"]))[both]
    assert np.median(grey_err) <= 3 and grey_err.mean() < 8
    # the targets a dataset derives: back-projected from the new depth with the new pose, they are
    # the points the renderer reports for those pixels
    pts = g.backproject_depth(np.where(both, d, 0), K, T_new)
    assert np.median(np.linalg.norm(pts[both] - truth["points"][both], axis=1)) < 3e-3
    col, row = np.round(source[both]).astype(int).T
    agree = np.sum(normals[row, col] * truth["normals"][both], axis=1)
    assert np.mean(agree > 0.99) > 0.97
    assert image.dtype == np.uint8 and d.dtype == np.float32


def test_synthesize_view_marks_disocclusions_unseen(indoor):
    """A step sideways uncovers a band at the border that the old view never saw: depth 0 there, and
    the image is filled (no black band a network could key on)."""
    _, K, T, grey, depth, _, _ = indoor
    # a step to the right with no turn: what the view sees slides left, its right border is new
    T_side = T @ g.make_pose(np.eye(3), np.array([0.4, 0.0, 0.0]))
    image, d, source = A.synthesize_view(grey, depth, K, T, T_side)
    assert (d[:, -10:] == 0).mean() > 0.9 and (d[:, :60] > 0).mean() > 0.95
    assert image[:, -10:].min() > 0 and np.isnan(source[d == 0]).all()


def test_sample_augmentation_draws_views_only_when_asked():
    plain = A.AugmentParams()
    moved = A.AugmentParams(view_shift=0.2, view_prob=1.0)
    a = A.sample_augmentation(plain, torch.Generator().manual_seed(4))
    b = A.sample_augmentation(moved, torch.Generator().manual_seed(4))
    assert "view" not in a and all(a[k] == b[k] for k in a)   # the earlier draws are unchanged
    shifts = [A.sample_augmentation(moved, torch.Generator().manual_seed(s))["view"] for s in range(200)]
    norms = np.linalg.norm(shifts, axis=1)
    assert norms.max() <= 0.2 and np.median(norms) > 0.12        # uniform in the ball: median 0.2 * 0.5^(1/3)
    never = A.AugmentParams(view_shift=0.2, view_prob=0.0)
    assert A.sample_augmentation(never, torch.Generator().manual_seed(4))["view"] is None
    for bad in (dict(view_shift=-0.1), dict(view_shift=1.0), dict(view_prob=1.5)):
        with pytest.raises(ValueError, match="view_"):
            A.AugmentParams(**bad)


def test_dataset_novel_views_keep_targets_on_their_cells(tmp_path):
    """Every labelled cell of a re-rendered item projects, with the item's pose and K, onto its own
    cell centre, and its normal faces that camera; the pose moved; init-only targets are refused
    with a clear error; relighting reads the carried normals."""
    from transpose.data.scene import SceneDataset

    synthetic.render_scene(tmp_path / "s", "indoor", frames=8, width=160, height=120, seed=0, progress=False)
    aug = A.AugmentParams(view_shift=0.2, view_prob=1.0)
    ds = SceneDataset(tmp_path / "s", "train_sim", augment=True, aug=aug, targets="depth", load_normals=True)
    torch.manual_seed(0)
    moved = []
    for i in range(len(ds)):
        item = ds[i]
        mask = item["mask"].numpy()
        pts = item["coords"].numpy()[:, mask].T
        uv, z = g.project(pts, item["pose"].numpy().astype(np.float64), item["K"].numpy().astype(np.float64))
        centres = g.cell_centers(*mask.shape, 8)[mask]
        assert mask.mean() > 0.5 and np.abs(uv - centres).max() < 1e-2 and (z > 0).all()
        n = item["normals"].numpy()[:, mask].T
        to_camera = item["pose"][:3, 3].numpy() - pts
        assert np.mean(np.sum(n * to_camera, axis=1) > 0) > 0.95     # seen surfaces face the new camera
        moved.append(np.linalg.norm(item["pose"][:3, 3].numpy() - ds.poses[i][:3, 3]))
    assert max(moved) > 0.05
    lit = SceneDataset(tmp_path / "s", "train_sim", augment=True, targets="depth",
                       aug=A.AugmentParams(view_shift=0.2, view_prob=1.0, relight=0.9), load_normals=False)
    torch.manual_seed(1)
    a = lit[2]
    torch.manual_seed(1)
    b = SceneDataset(tmp_path / "s", "train_sim", augment=True, targets="depth",
                     aug=A.AugmentParams(view_shift=0.2, view_prob=1.0), load_normals=False)[2]
    assert torch.equal(a["pose"], b["pose"]) and torch.equal(a["coords"], b["coords"])   # the same view
    assert (a["image"] - b["image"]).abs().mean() > 0.01                                  # relit
    with pytest.raises(ValueError, match="needs depth maps"):
        SceneDataset(tmp_path / "s", "train_sim", augment=True, targets="init", aug=aug)
    # without augmentation the flag is inert
    assert SceneDataset(tmp_path / "s", "train_sim", augment=False, targets="init", aug=aug)[0]["mask"].any()
