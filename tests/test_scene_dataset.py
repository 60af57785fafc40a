"""SceneDataset: reading the layout, targets from depth and init/, resize, augmentation consistency."""
import math

import numpy as np
import pytest
import torch

from transpose import geometry as g
from transpose.data import layout
from transpose.data.augment import AugmentParams
from transpose.data.scene import SCR_MEAN, SCR_STD, SceneDataset

H, W, F = 96, 128, 110.0


def smooth_depth(seed: int) -> np.ndarray:
    """A smooth surface 1.6..2.6 m in front of the camera, ``(H, W)``, with a hole of invalid pixels."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    d = 2.0 + 0.3 * np.sin(xs / 40.0 + seed) + 0.2 * np.cos(ys / 30.0 - seed)
    d[10:20, 30:50] = 0.0  # no depth here
    return d


def world_texture(X: np.ndarray) -> np.ndarray:
    """Grey value in [0.15, 0.85] painted on the scene surface, a function of the world point ``(..., 3)``."""
    return 0.5 + 0.35 * np.sin(3.0 * X[..., 0]) * np.cos(2.0 * X[..., 1] + X[..., 2])


def frame_pose(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return g.make_pose(g.rvec_to_rotmat(rng.normal(scale=0.5, size=3)), rng.normal(size=3))


def make_scene(root, n=3, section="train", init=False, init_ext=".npy", depth=True, normals=False):
    """Frames whose grey image is the world texture seen through the depth map, so image and targets agree."""
    K = g.intrinsics_from_focal(F, W, H)
    for k in range(n):
        T = frame_pose(k)
        d = smooth_depth(k)
        pix = g.cell_centers(H, W, stride=1)
        X = g.backproject_depth(d, K, T, pixels=pix)
        grey = np.where(d > 0, world_texture(np.nan_to_num(X)), 0.0)
        rgb = np.repeat(np.round(grey * 255).astype(np.uint8)[:, :, None], 3, axis=2)
        kw = {}
        if init:
            cells = g.cell_centers(H // 8, W // 8)
            d_cells = d[4::8, 4::8]
            Xc = np.moveaxis(np.nan_to_num(g.backproject_depth(d_cells, K, T, pixels=cells)), -1, 0)
            kw["init"] = Xc.astype(np.float32)
        if normals:
            kw["normal"] = np.tile(np.array([0.0, 0.0, 1.0])[:, None, None], (1, H // 8, W // 8))
        layout.write_frame(root, section, f"frame-{k:03d}", rgb=rgb, pose=T, K=F,
                           depth=d if depth else None, **kw)
        if init and init_ext == ".dat":
            p = root / section / "init" / f"frame-{k:03d}.npy"
            torch.save(torch.from_numpy(np.load(p)), p.with_suffix(".dat"))
            p.unlink()
    return K


def reprojection_errors(item):
    """Pixel distance between each valid coordinate target projected with the item's K and pose and its cell centre."""
    coords = item["coords"].numpy().astype(np.float64)
    mask = item["mask"].numpy()
    h, w = mask.shape
    centres = g.cell_centers(h, w)[mask]
    X = np.moveaxis(coords, 0, -1)[mask]
    uv, z = g.project(X, item["pose"].numpy().astype(np.float64), item["K"].numpy().astype(np.float64))
    assert np.all(z > 0)
    return np.linalg.norm(uv - centres, axis=1)


def test_plain_item_matches_files(tmp_path):
    K = make_scene(tmp_path, n=2)
    ds = SceneDataset(tmp_path, "train")
    assert len(ds) == 2 and ds.frames == ["frame-000", "frame-001"] and ds.targets == "depth"
    item = ds[1]
    assert item["image"].shape == (1, H, W) and item["image"].dtype == torch.float32
    assert item["coords"].shape == (3, H // 8, W // 8) and item["mask"].dtype == torch.bool
    assert item["depth"].shape == (H, W) and item["name"] == "frame-001"
    assert np.allclose(item["K"].numpy(), K)
    assert np.allclose(item["pose"].numpy(), frame_pose(1), atol=1e-6)
    # grey normalised as DSAC*: (x - 0.4) / 0.25
    raw = layout.read_image(tmp_path / "train" / "rgb" / "frame-001.png", gray=True) / 255.0
    assert torch.allclose(item["image"][0], torch.from_numpy((raw - SCR_MEAN) / SCR_STD).float(), atol=1e-6)
    # targets: depth sampled at the cell centres (8j+4, 8i+4), back-projected; the hole is masked out
    d = smooth_depth(1)
    d_mm = np.round(d * 1000) / 1000
    expected = g.backproject_depth(d_mm[4::8, 4::8], K, frame_pose(1), pixels=g.cell_centers(H // 8, W // 8))
    mask = item["mask"].numpy()
    assert np.array_equal(mask, d[4::8, 4::8] > 0) and (~mask).sum() == 2  # cells (1, 4) and (1, 5)
    assert np.abs(np.moveaxis(item["coords"].numpy(), 0, -1)[mask] - expected[mask]).max() < 1e-5
    assert np.all(item["coords"].numpy()[:, ~mask] == 0)
    assert reprojection_errors(item).max() < 1e-3


@pytest.mark.parametrize("ext", [".npy", ".dat"])
def test_init_targets_and_training_alias(tmp_path, ext):
    make_scene(tmp_path, n=1, section="training", init=True, init_ext=ext, depth=False, normals=True)
    ds = SceneDataset(tmp_path, "train")
    assert ds.targets == "init" and not ds.has_depth and ds.has_normals
    item = ds[0]
    init = layout.read_coords(next((tmp_path / "training" / "init").iterdir()))
    assert np.array_equal(item["coords"].numpy(), init)
    assert np.array_equal(item["mask"].numpy(), np.any(init != 0, axis=0))
    assert item["normals"].shape == (3, H // 8, W // 8) and np.all(item["normals"][2].numpy() == 1)
    assert "depth" not in item
    # CrossLoc's own converter writes -1 for "no point": read as no label too
    init[:, 2, 3] = -1
    path = next((tmp_path / "training" / "init").iterdir())
    if ext == ".dat":
        torch.save(torch.from_numpy(init), path)
    else:
        np.save(path, init)
    item = SceneDataset(tmp_path, "train")[0]
    assert not item["mask"][2, 3] and item["mask"].sum() == np.any(init != 0, axis=0).sum() - 1
    assert np.all(item["coords"][:, 2, 3].numpy() == 0)


def test_calibration_as_3x3_K_and_resize(tmp_path):
    make_scene(tmp_path, n=1)
    K_file = g.intrinsics_matrix(120.0, 100.0, 60.0, 50.0)
    layout.write_calibration(tmp_path / "train" / "calibration" / "frame-000.txt", K_file)
    item = SceneDataset(tmp_path, "train", image_height=48)[0]
    assert item["image"].shape == (1, 48, 64) and item["coords"].shape == (3, 6, 8)
    assert np.allclose(item["K"].numpy(), g.intrinsics_matrix(60.0, 50.0, 30.0, 25.0), atol=1e-5)
    assert item["depth"].shape == (48, 64)
    assert reprojection_errors(item).max() < 1e-3


def test_apr_mode_rgb_imagenet(tmp_path):
    make_scene(tmp_path, n=1)
    item = SceneDataset(tmp_path, "train", mode="apr", targets="none")[0]
    assert item["image"].shape == (3, H, W) and "coords" not in item
    raw = layout.read_image(tmp_path / "train" / "rgb" / "frame-000.png") / 255.0
    expected = (raw[:, :, 0] - 0.485) / 0.229
    assert torch.allclose(item["image"][0], torch.from_numpy(expected).float(), atol=1e-5)


def test_augmented_depth_targets_project_onto_their_cells(tmp_path):
    """Depth targets are back-projected on the ray of each output cell centre, so K and pose of the
    augmented view must put them back exactly (float32 round-off only: < 1e-3 px)."""
    make_scene(tmp_path, n=3)
    aug = AugmentParams(scale_min=0.6, scale_max=1.6, rotation_deg=40)
    ds = SceneDataset(tmp_path, "train", augment=True, aug=aug)
    torch.manual_seed(0)
    angles = []
    for k in range(9):
        item = ds[k % 3]
        err = reprojection_errors(item)
        assert err.size > 0.3 * item["mask"].numel() and err.max() < 1e-3
        R_rel = g.invert_pose(frame_pose(k % 3))[:3, :3] @ item["pose"].numpy()[:3, :3]
        angles.append(math.degrees(math.atan2(R_rel[1, 0], R_rel[0, 0])))
        # the augmented pose differs from the file's only by a rotation about the optical axis
        assert np.allclose(R_rel[:, 2], [0, 0, 1], atol=1e-5)
        assert np.allclose(item["pose"].numpy()[:3, 3], frame_pose(k % 3)[:3, 3], atol=1e-5)
    assert max(np.abs(angles)) > 15  # the augmentation did rotate


def test_augmented_init_targets_within_half_cell(tmp_path):
    """init/ targets are looked up at the nearest input cell, whose centre is at most half an input
    cell (4 px per axis) from the exact input position: after a zoom s the projected target is
    within 4 * sqrt(2) * s output pixels of its cell centre. Without the augmented pose it is far off."""
    make_scene(tmp_path, n=2, init=True, depth=False)
    aug = AugmentParams(scale_min=0.7, scale_max=1.4, rotation_deg=30)
    ds = SceneDataset(tmp_path, "train", augment=True, aug=aug)
    torch.manual_seed(1)
    worst_wrong = 0.0
    for k in range(8):
        item = ds[k % 2]
        s = float(item["K"][0, 0]) / F
        err = reprojection_errors(item)
        assert err.size > 20 and err.max() <= 4 * math.sqrt(2) * s + 1e-3
        wrong = dict(item, pose=torch.from_numpy(frame_pose(k % 2)).float())
        worst_wrong = max(worst_wrong, reprojection_errors(wrong).max())
    assert worst_wrong > 20


def ds_h(item):
    return item["image"].shape[-2]


def ds_w(item):
    return item["image"].shape[-1]


def test_augmented_image_moves_with_targets(tmp_path):
    """The image is the world texture, so after augmentation the grey level at each cell centre must be
    the texture of that cell's coordinate target (bilinear at a 2x2 pixel corner of a smooth texture: well under one grey level, 1/255)."""
    make_scene(tmp_path, n=2)
    aug = AugmentParams(scale_min=0.8, scale_max=1.3, rotation_deg=35, brightness=0, contrast=0)
    ds = SceneDataset(tmp_path, "train", augment=True, aug=aug)
    torch.manual_seed(2)
    for k in range(6):
        item = ds[k % 2]
        mask = item["mask"].numpy().copy()
        h, w = mask.shape
        pad = ((0, 8 * h + 8 - ds_h(item)), (0, 8 * w + 8 - ds_w(item)))  # partial last cells
        grey = np.pad(item["image"][0].numpy() * SCR_STD + SCR_MEAN, pad)
        depth = np.pad(item["depth"].numpy(), pad)
        # the cell centre (8j+4, 8i+4) is the corner of 4 pixels; away from the hole's edge all are valid
        at_centre = 0.25 * (grey[3::8, 3::8][:h, :w] + grey[4::8, 3::8][:h, :w] +
                            grey[3::8, 4::8][:h, :w] + grey[4::8, 4::8][:h, :w])
        corner_ok = ((depth[3::8, 3::8] > 0)[:h, :w] & (depth[4::8, 4::8] > 0)[:h, :w] &
                     (depth[3::8, 4::8] > 0)[:h, :w] & (depth[4::8, 3::8] > 0)[:h, :w])
        mask &= corner_ok
        expected = world_texture(np.moveaxis(item["coords"].numpy(), 0, -1)[mask])
        diff = np.abs(at_centre[mask] - expected)
        # a few cells whose bilinear footprint touches the canvas edge or the depth hole mix in black
        assert mask.sum() > 30 and np.median(diff) < 0.002 and np.percentile(diff, 90) < 0.006
        # targets one cell off (what a half-applied transform would give) do not match
        shifted = np.roll(np.moveaxis(item["coords"].numpy(), 0, -1), 1, axis=1)
        both = mask & np.roll(mask, 1, axis=1)
        assert np.median(np.abs(at_centre[both] - world_texture(shifted[both]))) > 0.01


def test_brightness_contrast_change_only_the_image(tmp_path):
    make_scene(tmp_path, n=1)
    aug = AugmentParams(scale_min=1, scale_max=1, rotation_deg=0, brightness=0.3, contrast=0.3)
    ds = SceneDataset(tmp_path, "train", augment=True, aug=aug)
    plain = SceneDataset(tmp_path, "train")[0]
    torch.manual_seed(3)
    item = ds[0]
    assert torch.equal(item["coords"], plain["coords"]) and torch.equal(item["K"], plain["K"])
    assert (item["image"] - plain["image"]).abs().max() > 0.05


def test_dataloader_workers_fixed_size_batches(tmp_path):
    make_scene(tmp_path, n=4)
    ds = SceneDataset(tmp_path, "train", augment=True, output_size=(64, 96))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    torch.manual_seed(4)
    batches = list(loader)
    assert len(batches) == 2
    b = batches[0]
    assert b["image"].shape == (2, 1, 64, 96) and b["coords"].shape == (2, 3, 8, 12) and b["K"].shape == (2, 3, 3)
    assert b["name"] == ["frame-000", "frame-001"]
    focals = [float(x["K"][i, 0, 0]) for x in batches for i in range(2)]
    assert len(set(np.round(focals, 4))) == 4  # workers draw different zooms
    for x in batches:
        for i in range(2):
            item = {k: v[i] for k, v in x.items() if k in ("coords", "mask", "K", "pose")}
            assert reprojection_errors(item).max() < 1e-3


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        SceneDataset(tmp_path / "nope", "train")
    make_scene(tmp_path, n=2)
    with pytest.raises(FileNotFoundError, match="section 'test' not found"):
        SceneDataset(tmp_path, "test")
    (tmp_path / "train" / "poses" / "frame-001.txt").unlink()
    with pytest.raises(ValueError, match=r"frame-001\.png: no pose file"):
        SceneDataset(tmp_path, "train")
    layout.write_pose(tmp_path / "train" / "poses" / "frame-001.txt", np.eye(4))
    (tmp_path / "train" / "poses" / "frame-001.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 3 0\n0 0 0 1\n")
    with pytest.raises(ValueError, match=r"frame-001\.txt: not a rigid transform"):
        SceneDataset(tmp_path, "train")
    layout.write_pose(tmp_path / "train" / "poses" / "frame-001.txt", np.eye(4))
    (tmp_path / "train" / "rgb" / "frame-001.png").write_bytes(b"not a png")
    ds = SceneDataset(tmp_path, "train")
    with pytest.raises(ValueError, match=r"frame-001\.png: cannot read image"):
        ds[1]
    with pytest.raises(ValueError, match="mode must be one of"):
        SceneDataset(tmp_path, "train", mode="xyz")


def test_cache_serves_the_same_items_without_reading_files_again(tmp_path, monkeypatch):
    make_scene(tmp_path, n=3, init=True, normals=True)
    kw = dict(augment=True, aug=AugmentParams(), image_height=48, load_depth=True, load_normals=True)
    plain = SceneDataset(tmp_path, "train", **kw)
    cached = SceneDataset(tmp_path, "train", cache_mb=64, **kw)
    reads = {"n": 0}
    original = layout.read_image

    def counting_read(*args, **kwargs):
        reads["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(layout, "read_image", counting_read)
    for epoch in range(2):
        for i in range(3):
            torch.manual_seed(10 * epoch + i)
            a = plain[i]
            torch.manual_seed(10 * epoch + i)
            b = cached[i]
            for key in ("image", "coords", "mask", "depth", "normals", "K", "pose"):
                assert torch.equal(a[key], b[key]), key
    assert reads["n"] == 2 * 3 + 3  # the plain dataset every time, the cached one once per frame
    assert all(not arr.flags.writeable for arr in cached._cache.values())
    assert 0 < cached._cached_bytes <= 64 * 2 ** 20


def test_cache_stays_within_its_budget(tmp_path):
    make_scene(tmp_path, n=3)
    one_image = H * W  # a grey uint8 frame
    ds = SceneDataset(tmp_path, "train", cache_mb=1.5 * one_image / 2 ** 20, load_depth=False, load_normals=False,
                      targets="none")
    for i in range(3):
        ds[i]
    assert ds._cached_bytes == one_image and len(ds._cache) == 1
    with pytest.raises(ValueError, match="cache_mb"):
        SceneDataset(tmp_path, "train", cache_mb=-1)
