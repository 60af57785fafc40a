"""Cambridge Landmarks setup on a tiny archive in the official layout (zip, NVM, dataset_*.txt)."""
import io as pyio
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transpose import geometry as g
from transpose.data import layout
from transpose.data.scene import SceneDataset
from transpose.data.setup import cambridge as cam
from transpose.data.setup import common

W0, H0, F0 = 384, 216, 300.0  # original image size and NVM focal (16:9 like the real 1920x1080)
FRAMES = {"train": ["seq1/frame00001.png", "seq1/frame00002.png"], "test": ["seq2/frame00001.png"]}


def pose_of(k: int) -> np.ndarray:
    rng = np.random.default_rng(k)
    return g.make_pose(g.rvec_to_rotmat(rng.normal(scale=0.1, size=3)), [k * 0.5, 0.0, 0.0])


def world_points() -> np.ndarray:
    """Points 4..12 m in front of every camera (cameras look roughly along +z), plus a near/far pair
    landing in the same cell of camera 0."""
    rng = np.random.default_rng(7)
    pts = np.c_[rng.uniform(-4, 5, 400), rng.uniform(-2.5, 2.5, 400), rng.uniform(4, 12, 400)]
    ray = np.array([0.5, 0.3, 1.0])
    T0 = pose_of(0)
    near, far = g.transform_points(T0, ray * 3.0), g.transform_points(T0, ray * 6.0)
    return np.vstack([pts, near, far])


def make_zip(folder: Path, scene="ShopFacade", bad_pose_line=False, truncate=False, extra_test_image=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = FRAMES["train"] + FRAMES["test"]
    pts = world_points()
    unseen = len(pts) - 3  # this point is in view of camera 0 but not in its measurement list
    lines = ["NVM_V3", "", str(len(names))]
    for k, name in enumerate(names):
        T = pose_of(k)
        q = g.rotmat_to_quat(T[:3, :3].T)  # world-to-camera rotation
        c = T[:3, 3]
        lines.append(f"{name[:-4]}.jpg {F0} " + " ".join(f"{v:.12g}" for v in (*q, *c)) + " 0.001 0")
    lines += ["", str(len(pts))]
    for p, X in enumerate(pts):
        meas = [k for k in range(len(names)) if not (k == 0 and p == unseen)]
        lines.append(" ".join(f"{v:.12g}" for v in X) + " 128 128 128 " + str(len(meas)) + "".join(
            f" {k} {p} 0.0 0.0" for k in meas))
    lines += ["", "0", ""]
    header = "Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n"
    split_text = {}
    for section, frames in FRAMES.items():
        rows = []
        for name in frames:
            T = pose_of(names.index(name))
            q = g.rotmat_to_quat(T[:3, :3].T)
            rows.append(name + " " + " ".join(f"{v:.12g}" for v in (*T[:3, 3], *q)))
        if section == "test" and extra_test_image:
            rows.append("seq9/frame00001.png 1 2 3 1 0 0 0")  # not in the NVM: skipped
        if section == "test" and bad_pose_line:
            rows.append("seq2/frame00002.png 1 2 nan 1 0 0 0")
        split_text[section] = header + "\n".join(rows) + "\n"
    path = folder / f"{scene}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{scene}/reconstruction.nvm", "\n".join(lines))
        for section, text in split_text.items():
            zf.writestr(f"{scene}/dataset_{section}.txt", text)
        yy, xx = np.mgrid[0:H0, 0:W0]
        for name in names:
            buf = pyio.BytesIO()
            Image.fromarray(np.dstack([xx % 256, yy, (xx + yy) % 256]).astype(np.uint8)).save(buf, format="PNG")
            zf.writestr(f"{scene}/{name}", buf.getvalue())
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 100])
    return path


def test_conversion_resizes_and_builds_zbuffered_init(tmp_path):
    make_zip(tmp_path / "a")
    assert cam.run(["--scene", "ShopFacade", "--archives", str(tmp_path / "a"), "--out", str(tmp_path / "o"),
                    "--workers", "1"]) == 0
    scene = tmp_path / "o" / "Cambridge_ShopFacade"
    assert layout.is_complete(scene)
    info = __import__("json").loads((scene / layout.COMPLETE_MARKER).read_text())
    assert info["train"] == 2 and info["test"] == 1 and info["test_skipped_not_in_nvm"] == 1
    train = SceneDataset(scene, "train")
    assert train.frames == ["seq1_frame00001", "seq1_frame00002"] and train.targets == "init"
    H, W = 480, round(W0 * 480 / H0)
    item = train[0]
    assert item["image"].shape == (1, H, W) and item["coords"].shape == (3, 60, math.ceil(W / 8))
    f = F0 * 480 / H0
    assert np.allclose(item["K"].numpy(), g.intrinsics_from_focal(f, W, H), atol=1e-4)
    assert np.allclose(item["pose"].numpy(), pose_of(0), atol=1e-6)
    # every label is an SfM point measured by this camera, inside its cell, the nearest one there
    K = g.intrinsics_from_focal(f, W, H)
    pts = world_points()
    seen = np.delete(pts, len(pts) - 3, axis=0)
    uv, z = g.project(seen, pose_of(0), K)
    inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    cells = (uv[inside] // 8).astype(int)
    expected = np.zeros((3, 60, math.ceil(W / 8)), np.float32)
    best = np.full(expected.shape[1:], np.inf)
    for (cj, ci), X, depth in zip(cells, seen[inside], z[inside]):
        if depth < best[ci, cj]:
            best[ci, cj] = depth
            expected[:, ci, cj] = X
    coords = item["coords"].numpy()
    assert np.abs(coords - expected).max() < 1e-5
    assert item["mask"].sum() == np.isfinite(best).sum() > 100
    # the near point of the near/far pair in one cell won; the unseen point is nowhere
    assert np.any(np.all(np.isclose(coords, g.transform_points(pose_of(0), [1.5, 0.9, 3.0])[:, None, None],
                                    atol=1e-5), axis=0))
    assert not np.any(np.all(np.isclose(coords, g.transform_points(pose_of(0), [3.0, 1.8, 6.0])[:, None, None],
                                        atol=1e-5), axis=0))
    assert not np.any(np.all(np.isclose(coords, pts[len(pts) - 3][:, None, None], atol=1e-5), axis=0))
    # DSAC*-style .dat tensors
    t = torch.load(scene / "train" / "init" / "seq1_frame00001.dat", weights_only=True)
    assert t.shape == (3, 60, math.ceil(W / 8)) and t.dtype == torch.float32


def test_sparse_coordinate_map_nearest_per_cell():
    K = g.intrinsics_from_focal(100.0, 32, 16)
    T = np.eye(4)
    pts = np.array([[0.0, 0.0, 2.0], [0.001, 0.0, 1.0], [0.0, 0.0, -1.0], [5.0, 0.0, 1.0], [0.0, 0.0, 2000.0]])
    out = common.sparse_coordinate_map(pts, T, K, (16, 32))
    assert out.shape == (3, 2, 4)
    assert np.allclose(out[:, 1, 2], pts[1])  # pixel (16.1, 8) -> cell (1, 2): the nearer of the two
    assert np.count_nonzero(np.any(out != 0, axis=0)) == 1  # behind, outside and too far are dropped


def test_nvm_and_dataset_file_errors(tmp_path):
    bad = tmp_path / "r.nvm"
    bad.write_text("NVM_V3\n\n1\nimg.jpg 100 1 0 0 0 0 0 0 0 0\n\n1\n0 0 1 1 1 1 2 0 0 0 0\n")
    with pytest.raises(ValueError, match=r"r\.nvm:7: point line lists 2 measurements"):
        cam.read_nvm(bad)
    bad.write_text("PLY\n")
    with pytest.raises(ValueError, match=r"r\.nvm:1: not an NVM_V3 file"):
        cam.read_nvm(bad)
    make_zip(tmp_path / "a", bad_pose_line=True)
    with pytest.raises(ValueError, match=r"dataset_test\.txt:6: non-finite value"):
        cam.run(["--scene", "ShopFacade", "--archives", str(tmp_path / "a"), "--out", str(tmp_path / "o"),
                 "--workers", "1"])
    assert not (tmp_path / "o" / "Cambridge_ShopFacade").exists() and list((tmp_path / "o").iterdir()) == []
    make_zip(tmp_path / "b", truncate=True)
    with pytest.raises(ValueError, match=r"ShopFacade\.zip: corrupt or truncated"):
        cam.run(["--scene", "ShopFacade", "--archives", str(tmp_path / "b"), "--out", str(tmp_path / "o")])
    assert list((tmp_path / "o").iterdir()) == []
