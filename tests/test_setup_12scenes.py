"""12-Scenes setup on a tiny archive in the official layout (zip of rooms, info.txt, split.txt)."""
import io as pyio
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transpose import geometry as g
from transpose.data import layout
from transpose.data.scene import SceneDataset
from transpose.data.setup import twelvescenes as s12

INFO = ("m_versionNumber = 4\nm_sensorName = StructureSensor\nm_colorWidth = 64\nm_colorHeight = 48\n"
        "m_depthWidth = 64\nm_depthHeight = 48\nm_depthShift = 1000\n"
        "m_calibrationColorIntrinsic = 60.5 0 32 0 0 59.5 24 0 0 0 1 0 0 0 0 1 \n"
        "m_calibrationColorExtrinsic = 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1 \n")


def pose(k):
    return g.make_pose(g.rvec_to_rotmat([0.05 * k, 0.1, -0.02 * k]), [k, 1.0, 2.0])


def jpg(seed):
    buf = pyio.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def make_zip(folder: Path, rooms=("kitchen", "living"), invalid=(3,), nonrigid=None, split=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "apt1.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for room in rooms:
            base = f"apt1/{room}"
            zf.writestr(f"{base}/info.txt", INFO)
            if split:
                zf.writestr(f"{base}/split.txt", "sequence0 [frames=2]  [start=0 ; end=1]\n"
                                                 "sequence1 [frames=4]  [start=2 ; end=5]\n")
            for k in range(6):
                name = f"{base}/data/frame-{k:06d}"
                zf.writestr(f"{name}.color.jpg", jpg(k))
                if k in invalid:  # how tracking failures look in the official files
                    text = "\n".join(["-1.#INF -1.#INF -1.#INF -1.#INF"] * 4) + "\n"
                else:
                    T = pose(k)
                    if nonrigid == k:
                        T = T * np.array([[1, 1, 1, 1], [1, 2, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
                    text = "\n".join(" ".join(f"{v:.9f}" for v in row) for row in T) + "\n"
                zf.writestr(f"{name}.pose.txt", text)
    return path


def test_room_conversion_split_focal_and_invalid_poses(tmp_path):
    make_zip(tmp_path / "a")
    s12.run(["--scene", "apt1_kitchen", "--archives", str(tmp_path / "a"), "--out", str(tmp_path / "o"),
             "--workers", "1"])
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["12scenes_apt1_kitchen"]  # living not asked for
    scene = tmp_path / "o" / "12scenes_apt1_kitchen"
    assert layout.is_complete(scene)
    test, train = SceneDataset(scene, "test", targets="none"), SceneDataset(scene, "train", targets="none")
    assert test.frames == ["frame-000000", "frame-000001"]
    assert train.frames == ["frame-000002", "frame-000004", "frame-000005"]  # frame 3: -1.#INF pose skipped
    assert np.allclose(train.intrinsics(0), g.intrinsics_from_focal(60.0, 64, 48))
    assert np.allclose(train.poses[1], pose(4), atol=1e-8)
    # images are copied byte for byte
    src = jpg(5)
    assert (scene / "train" / "rgb" / "frame-000005.color.jpg").read_bytes() == src
    item = train[2]
    assert item["image"].shape == (1, 48, 64)


def test_whole_archive_and_errors(tmp_path):
    make_zip(tmp_path / "a")
    s12.run(["--scene", "apt1", "--archives", str(tmp_path / "a"), "--out", str(tmp_path / "o"), "--workers", "1"])
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["12scenes_apt1_kitchen", "12scenes_apt1_living"]
    make_zip(tmp_path / "b", nonrigid=4)
    with pytest.raises(ValueError, match=r"frame-000004\.pose\.txt: not a rigid transform"):
        s12.run(["--scene", "apt1_living", "--archives", str(tmp_path / "b"), "--out", str(tmp_path / "p"),
                 "--workers", "1"])
    make_zip(tmp_path / "c", split=False)
    with pytest.raises(FileNotFoundError, match=r"living/split\.txt: split file not found"):
        s12.run(["--scene", "apt1_living", "--archives", str(tmp_path / "c"), "--out", str(tmp_path / "p")])
    assert not (tmp_path / "p").exists() or list((tmp_path / "p").iterdir()) == []
    with pytest.raises(ValueError, match="unknown 12-Scenes scene 'apt3'"):
        s12.run(["--scene", "apt3"])


def test_pose_and_info_parsers(tmp_path):
    p = tmp_path / "x.pose.txt"
    p.write_text("nan 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    assert s12.read_pose_or_none(p) is None
    p.write_text("1 0 0 0\n0 1 0 0\n0 0 1 zero\n0 0 0 1\n")
    with pytest.raises(ValueError, match=r"x\.pose\.txt: cannot parse 'zero'"):
        s12.read_pose_or_none(p)
    info = tmp_path / "info.txt"
    info.write_text("m_colorWidth = 64\n")
    with pytest.raises(ValueError, match=r"info\.txt: no m_calibrationColorIntrinsic"):
        s12.read_info_focal(info)
    split = tmp_path / "split.txt"
    split.write_text("sequence0 357\n")
    with pytest.raises(ValueError, match=r"split\.txt: first line must look like"):
        s12.read_test_count(split)
