"""7-Scenes setup: official archive layout, registration to the colour camera, real samples, errors."""
import io as pyio
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transpose import geometry as g
from transpose.data import layout
from transpose.data.scene import SceneDataset
from transpose.data.setup import sevenscenes as s7

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
STAIRS = SHARED / "7scenes_stairs_sample"
REDKITCHEN = SHARED / "7scenes_redkitchen_50"
PLANE_Z = 2.0


def depth_pose(seq: int, frame: int) -> np.ndarray:
    rng = np.random.default_rng(10 * seq + frame)
    return g.make_pose(g.rvec_to_rotmat(rng.normal(scale=0.3, size=3)), rng.normal(size=3))


def png_bytes(array: np.ndarray) -> bytes:
    buf = pyio.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def pose_text(T: np.ndarray) -> str:
    return "\n".join("\t".join(f"{v: .7e}" for v in row) for row in T) + "\n"


def make_archive(folder: Path, scene="chess", train=(1,), test=(2,), frames=2, break_pose=None, drop=None) -> Path:
    """``<scene>.zip`` as Microsoft ships it: split files and one inner zip per sequence.

    The depth sensor sees a fronto-parallel plane at PLANE_Z metres (uint16 mm)."""
    folder.mkdir(parents=True, exist_ok=True)
    colour = np.zeros((480, 640, 3), np.uint8)
    colour[:, :, 0] = np.arange(640)[None, :] // 3
    colour[:, :, 1] = np.arange(480)[:, None] // 2
    depth = np.full((480, 640), int(PLANE_Z * 1000), np.uint16)
    depth[:20] = 65535  # invalid
    path = folder / f"{scene}.zip"
    with zipfile.ZipFile(path, "w") as outer:
        if drop != "TrainSplit.txt":
            outer.writestr(f"{scene}/TrainSplit.txt", "".join(f"sequence{k}\n" for k in train))
        outer.writestr(f"{scene}/TestSplit.txt", "".join(f"sequence{k}\n" for k in test))
        for seq in list(train) + list(test):
            inner = pyio.BytesIO()
            with zipfile.ZipFile(inner, "w") as zf:
                for f in range(frames):
                    base = f"seq-{seq:02d}/frame-{f:06d}"
                    zf.writestr(f"{base}.color.png", png_bytes(colour))
                    zf.writestr(f"{base}.depth.png", png_bytes(depth))
                    T = depth_pose(seq, f)
                    if break_pose == (seq, f):
                        T = T.copy()
                        T[0, 0] *= 1.5
                    zf.writestr(f"{base}.pose.txt", pose_text(T))
            outer.writestr(f"{scene}/seq-{seq:02d}.zip", inner.getvalue())
    return path


def test_official_layout_conversion_registers_to_colour(tmp_path):
    make_archive(tmp_path / "archives")
    assert s7.run(["--scene", "chess", "--archives", str(tmp_path / "archives"), "--out", str(tmp_path / "out"),
                   "--workers", "1"]) == 0
    scene = tmp_path / "out" / "7scenes_chess"
    assert layout.is_complete(scene) and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["7scenes_chess"]
    train = SceneDataset(scene, "train", targets="depth")
    test = SceneDataset(scene, "test", targets="depth")
    assert train.frames == ["seq-01-frame-000000", "seq-01-frame-000001"]
    assert test.frames == ["seq-02-frame-000000", "seq-02-frame-000001"]
    # pose of the colour camera = depth pose composed with the inverse depth-to-colour calibration
    T_color = layout.read_pose(scene / "train" / "poses" / "seq-01-frame-000001.pose.txt")
    assert np.allclose(T_color, depth_pose(1, 1) @ np.linalg.inv(s7.COLOR_FROM_DEPTH), atol=1e-6)
    assert np.isclose(np.linalg.norm(T_color[:3, 3] - depth_pose(1, 1)[:3, 3]), 0.02559, atol=1e-4)
    assert np.allclose(train.intrinsics(0), g.intrinsics_from_focal(525.0, 640, 480))
    # registered depth, lifted with the colour camera, lies on the plane the depth sensor saw
    for ds, (seq, f) in ((train, (1, 0)), (test, (2, 1))):
        item = ds[f]
        d = item["depth"].numpy().astype(np.float64)
        valid = d > 0
        assert 0.6 < valid.mean() < 0.95  # the colour camera sees more than the depth sensor
        X = g.backproject_depth(d, g.intrinsics_from_focal(525, 640, 480), item["pose"].numpy().astype(np.float64),
                                pixels=g.cell_centers(480, 640, 1))[valid]
        z_depth_frame = g.transform_points(g.invert_pose(depth_pose(seq, f)), X)[:, 2]
        assert np.abs(z_depth_frame - PLANE_Z).max() < 0.004  # 1 mm quantisation + sub-pixel splatting
        # and the coordinate targets at the cell centres project back onto their cells
        uv, _ = g.project(np.moveaxis(item["coords"].numpy(), 0, -1)[item["mask"].numpy()],
                          item["pose"].numpy().astype(np.float64), item["K"].numpy().astype(np.float64))
        assert np.abs(uv - g.cell_centers(60, 80)[item["mask"].numpy()]).max() < 0.01


def test_original_poses_keep_the_archive_values(tmp_path):
    make_archive(tmp_path / "a", train=(3,), test=(1,), frames=1)
    s7.run(["--scene", "chess", "--archives", str(tmp_path / "a"), "--out", str(tmp_path / "o"), "--poses", "original",
            "--depth", "none", "--workers", "1"])
    scene = tmp_path / "o" / "7scenes_chess"
    assert np.allclose(layout.read_pose(scene / "train" / "poses" / "seq-03-frame-000000.pose.txt"),
                       depth_pose(3, 0), atol=1e-6)
    assert not (scene / "train" / "depth").exists()
    assert (scene / "train" / "rgb" / "seq-03-frame-000000.color.png").is_file()


def test_register_depth_pure_focal_change_is_a_zoom():
    """With identity extrinsics, registration only rescales about the centre by 525/585."""
    depth = np.zeros((480, 640))
    depth[200:280, 300:340] = 1.5
    out = s7.register_depth(depth, np.eye(4))
    ys, xs = np.nonzero(out)
    assert np.allclose(out[ys, xs], 1.5)
    r = 525 / 585
    assert abs(xs.min() - (320 + (300 - 320) * r)) <= 1 and abs(xs.max() + 1 - (320 + (340 - 320) * r)) <= 1
    assert abs(ys.min() - (240 + (200 - 240) * r)) <= 1 and abs(ys.max() + 1 - (240 + (280 - 240) * r)) <= 1
    # z-buffer: a nearer surface hides a farther one landing on the same pixels
    depth2 = np.full((480, 640), 3.0)
    depth2[200:280, 300:340] = 1.0
    out2 = s7.register_depth(depth2, np.eye(4))
    assert np.all(out2[ys, xs][(ys > 205) & (ys < 270) & (xs > 305) & (xs < 330)] == 1.0)


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "datasets" / "setup_7scenes.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_errors_leave_no_complete_output(tmp_path):
    # a truncated download: the CLI prints one line naming the archive and exits non-zero
    arch = make_archive(tmp_path / "a")
    data = arch.read_bytes()
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "chess.zip").write_bytes(data[: len(data) // 2])
    r = run_cli("--scene", "chess", "--archives", str(tmp_path / "t"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0
    assert "chess.zip" in r.stderr and ("corrupt" in r.stderr or "not a zip" in r.stderr)
    assert not (tmp_path / "o" / "7scenes_chess").exists()
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []  # no work or staging left
    # non-rigid pose in the second sequence: error names the pose file; nothing looks complete
    make_archive(tmp_path / "b", break_pose=(2, 1))
    with pytest.raises(ValueError, match=r"seq-02/frame-000001\.pose\.txt: not a rigid transform"):
        s7.run(["--scene", "chess", "--archives", str(tmp_path / "b"), "--out", str(tmp_path / "o"), "--workers", "1"])
    assert not (tmp_path / "o" / "7scenes_chess").exists()
    assert list((tmp_path / "o").iterdir()) == []  # staging and work folders removed
    # missing split file
    make_archive(tmp_path / "c", drop="TrainSplit.txt")
    with pytest.raises(FileNotFoundError, match=r"TrainSplit\.txt: split file not found"):
        s7.run(["--scene", "chess", "--archives", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--workers", "1"])
    # archive absent from --archives, unknown scene
    with pytest.raises(FileNotFoundError, match=r"fire\.zip: archive not found"):
        s7.run(["--scene", "fire", "--archives", str(tmp_path / "c"), "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="unknown kitchen"):
        s7.run(["--scene", "kitchen", "--out", str(tmp_path / "o")])


def test_unreadable_image_named(tmp_path):
    src = tmp_path / "src"
    (src / "seq-01").mkdir(parents=True)
    (src / "TrainSplit.txt").write_text("sequence1\n")
    (src / "TestSplit.txt").write_text("sequence1\n")
    (src / "seq-01" / "frame-000000.color.png").write_bytes(b"\x89PNG broken")
    (src / "seq-01" / "frame-000000.pose.txt").write_text(pose_text(np.eye(4)))
    with pytest.raises(ValueError, match=r"frame-000000\.color\.png: cannot read image"):
        s7.setup_scene("heads", tmp_path / "o", source=src, depth=False)
    assert not (tmp_path / "o" / "7scenes_heads").exists()


@pytest.mark.skipif(not STAIRS.is_dir(), reason="real 7-Scenes sample not available")
def test_real_stairs_sample_conversion(tmp_path):
    """The real sample in its original layout: official split (sequence2/3 train, 1/4 test), and the
    registered depth of one frame re-projected into the next lands on that frame's depth."""
    scene = s7.setup_scene("stairs", tmp_path, source=STAIRS, workers=1)
    train = SceneDataset(scene, "train", targets="depth")
    test = SceneDataset(scene, "test", targets="depth")
    assert {k[:6] for k in train.frames} == {"seq-02", "seq-03"} and len(train) == 6
    assert {k[:6] for k in test.frames} == {"seq-01", "seq-04"} and len(test) == 6
    med, frac = depth_agreement(scene / "train", "seq-02-frame-000000", "seq-02-frame-000001")
    assert med < 0.02 and frac > 0.9


def depth_agreement(section: Path, a: str, b: str, invert=False, photometric=False):
    """Median |z difference| (m) and fraction within 5 cm of frame a's depth re-projected into frame b
    (and, when ``photometric``, the mean absolute grey difference of the matched pixels)."""
    K = g.intrinsics_from_focal(525, 640, 480)
    da, db = (layout.read_depth(section / "depth" / f"{k}.depth.png") for k in (a, b))
    Ta, Tb = (layout.read_pose(section / "poses" / f"{k}.pose.txt") for k in (a, b))
    if invert:
        Ta, Tb = g.invert_pose(Ta), g.invert_pose(Tb)
    ok = da > 0
    X = g.backproject_depth(da, K, Ta, pixels=g.cell_centers(480, 640, 1))[ok]
    uv, z = g.project(X, Tb, K)
    c = np.floor(uv).astype(int)
    inside = (c[:, 0] >= 0) & (c[:, 0] < 640) & (c[:, 1] >= 0) & (c[:, 1] < 480) & (z > 0)
    zb = db[c[inside, 1], c[inside, 0]]
    has = zb > 0
    dz = np.abs(zb[has] - z[inside][has])
    if not photometric:
        return np.median(dz), np.mean(dz < 0.05)
    ia, ib = (layout.read_image(next((section / "rgb").glob(f"{k}.color.*")), gray=True).astype(float) for k in (a, b))
    return np.median(dz), np.mean(dz < 0.05), np.abs(ia[ok][inside] - ib[c[inside, 1], c[inside, 0]]).mean()


@pytest.mark.skipif(not REDKITCHEN.is_dir(), reason="real 7-Scenes sample not available")
def test_real_redkitchen_registration(tmp_path):
    """Frames 8 and 57 of redkitchen seq-01 (lossless colour). Registered depth of frame 8 re-projected
    into frame 57 agrees to ~1 cm (world-to-camera poses would not), and registering to the colour
    camera makes the colour images agree better than keeping the depth sensor's poses (measured:
    mean grey difference 13.0 vs 14.4)."""
    src = tmp_path / "src"
    (src / "seq-01").mkdir(parents=True)
    (src / "TrainSplit.txt").write_text("sequence1\n")
    (src / "TestSplit.txt").write_text("sequence1\n")
    for k in (8, 57):  # links, not copies: the sample stays where it is
        for suffix in ("color.png", "depth.png", "pose.txt"):
            (src / "seq-01" / f"frame-{k:06d}.{suffix}").symlink_to(REDKITCHEN / f"frame-{k:06d}.{suffix}")
    a, b = "seq-01-frame-000008", "seq-01-frame-000057"
    photo = {}
    for mode in ("calibrated", "original"):
        scene = s7.setup_scene("redkitchen", tmp_path / mode, source=src, poses=mode, workers=1)
        med, frac, photo[mode] = depth_agreement(scene / "train", a, b, photometric=True)
        assert med < 0.02 and frac > 0.9
    med_inv, frac_inv = depth_agreement(tmp_path / "calibrated" / "7scenes_redkitchen" / "train", a, b, invert=True)
    assert med_inv > 3 * med and frac_inv < frac - 0.1
    assert photo["calibrated"] < 0.95 * photo["original"]
