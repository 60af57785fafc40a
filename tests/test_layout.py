import numpy as np
import pytest

from transpose import geometry as g
from transpose.data import layout


def test_frame_key_strips_role_suffixes():
    assert layout.frame_key("seq-01-frame-000000.color.png") == "seq-01-frame-000000"
    assert layout.frame_key("seq-01-frame-000000.pose.txt") == "seq-01-frame-000000"
    assert layout.frame_key("seq-01-frame-000000.txt") == "seq-01-frame-000000"
    assert layout.frame_key("img_00012.png") == "img_00012"


def test_write_then_read_frame(tmp_path):
    rng = np.random.default_rng(0)
    T = g.make_pose(g.rvec_to_rotmat([0.1, -0.2, 0.3]), [1.0, 2.0, -0.5])
    K = g.intrinsics_matrix(500.0, 510.0, 33.0, 23.0)
    depth = rng.uniform(0.5, 5.0, size=(48, 64)).astype(np.float32)
    depth[0, 0] = 0
    init = rng.normal(size=(3, 6, 8)).astype(np.float32)
    rgb = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    layout.write_frame(tmp_path, "training", "f1", rgb=rgb, pose=T, K=K, depth=depth, init=init)
    sec = layout.section_dir(tmp_path, "train")  # 'training' is read as 'train'
    assert layout.list_sections(tmp_path) == ["train"]
    assert np.allclose(layout.read_pose(sec / "poses" / "f1.txt"), T, atol=1e-8)
    assert np.allclose(layout.read_calibration(sec / "calibration" / "f1.txt", 64, 48), K)
    d = layout.read_depth(sec / "depth" / "f1.png")
    assert d[0, 0] == 0 and np.abs(d - depth)[depth > 0].max() <= 0.0005 + 1e-6
    assert np.array_equal(layout.read_coords(sec / "init" / "f1.npy"), init)
    assert np.array_equal(layout.read_image(sec / "rgb" / "f1.png"), rgb)
    # no temporary files left behind
    assert not [p for p in tmp_path.rglob(".*.tmp")]


def test_clear_errors(tmp_path):
    bad = tmp_path / "bad.pose.txt"
    bad.write_text("1 0 0 0\n0 2 0 0\n0 0 1 0\n0 0 0 1\n")
    with pytest.raises(ValueError, match="bad.pose.txt: not a rigid transform"):
        layout.read_pose(bad)
    cal = tmp_path / "c.txt"
    cal.write_text("1 2\n")
    with pytest.raises(ValueError, match="c.txt: calibration must hold one focal length"):
        layout.read_calibration(cal, 640, 480)
    img = tmp_path / "x.png"
    img.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="x.png: cannot read image"):
        layout.read_image(img)
    with pytest.raises(FileNotFoundError, match="scene 'nope' not found"):
        layout.resolve_scene("nope", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="section 'test' not found"):
        layout.section_dir(tmp_path, "test")
