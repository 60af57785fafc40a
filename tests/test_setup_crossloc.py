"""CrossLoc (EPFL / comballaz) setup: geodesy and pose conventions, and a tiny raw dataset converted."""
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transpose import geometry as g
from transpose.data import layout
from transpose.data.scene import SceneDataset
from transpose.data.setup import crossloc as cl

H, W, FOCAL = 48, 72, 48.0


def test_geodesy_wgs84():
    assert np.allclose(cl.geodetic_to_ecef(0, 0, 0), [6378137.0, 0, 0])
    assert np.allclose(cl.geodetic_to_ecef(90, 0, 0), [0, 0, 6378137.0 * (1 - 1 / 298.257223563)], atol=1e-6)
    for lat, lon, alt in ((46.5191, 6.5668, 390.0), (46.3705, 7.065, 1410.0), (-33.9, 151.2, -20.0)):
        back = cl.ecef_to_geodetic(cl.geodetic_to_ecef(lat, lon, alt))
        assert abs(back[0] - lat) < 1e-9 and abs(back[1] - lon) < 1e-9 and abs(back[2] - alt) < 1e-4


def test_ned_frame_matches_crossloc_construction():
    """CrossLoc builds NED-in-ECEF as Rz(lon) @ Ry(-lat - 90 deg); ours is written from the axes directly."""
    for lat, lon in ((46.5191, 6.5668), (-10.0, 120.0), (0.0, 0.0)):
        a, b = math.radians(lon), -math.radians(lat) - math.pi / 2
        Rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
        Ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
        assert np.allclose(cl.ned_in_ecef(lat, lon), Rz @ Ry, atol=1e-12)


def test_camera_axes_from_yaw_pitch_roll():
    x = 6378137.0  # on the equator at longitude 0: north = +Z, east = +Y, down = -X (ECEF)
    T = cl.camera_pose_from_ecef(x, 0, 0, 0, 0, 0)
    assert np.allclose(T[:3, 2], [0, 0, 1]) and np.allclose(T[:3, 0], [0, 1, 0]) and np.allclose(T[:3, 1], [-1, 0, 0])
    assert np.allclose(cl.camera_pose_from_ecef(x, 0, 0, 90, 0, 0)[:3, 2], [0, 1, 0], atol=1e-12)  # yaw 90: east
    assert np.allclose(cl.camera_pose_from_ecef(x, 0, 0, 0, -90, 0)[:3, 2], [-1, 0, 0], atol=1e-12)  # pitch -90: down
    T = cl.camera_pose_from_ecef(x, 0, 0, 0, 0, 90)  # roll 90 about forward: right axis turns to down
    assert np.allclose(T[:3, 0], [-1, 0, 0], atol=1e-12)
    assert np.allclose(cl.camera_pose_from_ecef(x, 1, 2, 0, 0, 0, origin=[x, 0, 0])[:3, 3], [0, 1, 2])


def test_grid_normals_of_a_plane_face_the_camera():
    ys, xs = np.mgrid[0:5, 0:6].astype(float)
    pts = np.stack([xs, ys, 0.3 * xs + 2.0])  # plane z = 0.3 x + 2
    valid = np.ones((5, 6), bool)
    valid[2, 3] = False
    n = cl.grid_normals(pts, valid, np.array([0.0, 0.0, -5.0]))
    expected = np.array([0.3, 0.0, -1.0]) / math.hypot(0.3, 1.0)  # facing the camera below the plane
    assert np.allclose(n[:, valid], expected[:, None], atol=1e-9) and np.all(n[:, 2, 3] == 0)


def flight_poses(n: int, seed: int) -> np.ndarray:
    """Rows x, y, z (ECEF), yaw, pitch, roll: cameras 150..250 m above the origin, looking down-ish."""
    rng = np.random.default_rng(seed)
    lat0, lon0, alt0 = cl.COMBALLAZ.origin_lat_lon_alt
    rows = []
    for _ in range(n):
        xyz = cl.geodetic_to_ecef(lat0 + rng.uniform(-1e-3, 1e-3), lon0 + rng.uniform(-1e-3, 1e-3),
                                  alt0 + rng.uniform(150, 250))
        rows.append([*xyz, rng.uniform(-180, 180), rng.uniform(-80, -40), rng.uniform(-5, 5)])
    return np.asarray(rows)


def render(folder: Path, prefix: str, poses: np.ndarray, sky_rows: int = 0) -> None:
    """Rendered frames of the ground plane (tangent to the ellipsoid at the origin): image, ECEF cloud."""
    folder.mkdir(parents=True, exist_ok=True)
    origin = cl.COMBALLAZ.origin
    up = -cl.ned_in_ecef(*cl.COMBALLAZ.origin_lat_lon_alt[:2])[:, 2]
    K = g.intrinsics_from_focal(FOCAL, W, H)
    np.save(folder / f"{prefix}_poses.npy", poses)
    for idx, row in enumerate(poses):
        T = cl.camera_pose_from_ecef(*row)  # absolute ECEF pose
        rays = np.linalg.inv(K) @ np.vstack([g.cell_centers(H, W, 1).reshape(-1, 2).T, np.ones(H * W)])
        d = T[:3, :3] @ rays
        t = ((origin - T[:3, 3]) @ up) / (up @ d)
        pc = (T[:3, 3][:, None] + t * d).T.reshape(H, W, 3)
        pc[t.reshape(H, W) <= 0] = -1
        pc[:sky_rows] = -1  # no data (sky)
        np.save(folder / f"{prefix}_{idx:05d}_pc.npy", pc)
        grey = (np.arange(W)[None, :] * 3 + idx * 10 + np.zeros((H, 1))).astype(np.uint8)
        Image.fromarray(np.dstack([grey] * 3)).save(folder / f"{prefix}_{idx:05d}_img.png")


def make_raw(root: Path, frames_per_flight=4, lhs_frames=10) -> None:
    spec = cl.COMBALLAZ
    render(root / spec.lhs[1], "lhs", flight_poses(lhs_frames, 0), sky_rows=8)
    for f, (_, dir_c, _, dir_t, _, dir_r) in enumerate(spec.flights):
        prefix = f"flight{f}"
        render(root / dir_c, prefix, flight_poses(frames_per_flight, f + 1))
        (root / dir_t).mkdir(parents=True)
        (root / dir_r).mkdir(parents=True)
        for idx in range(frames_per_flight):
            key = f"{prefix}_{idx:05d}"
            Image.fromarray(np.full((H, W, 3), 100 + idx, np.uint8)).save(root / dir_t / f"{key}_fake_B.png")
            # real photos come larger (same aspect) and are resized to the render's size
            Image.fromarray(np.full((2 * H, 2 * W, 3), 50 + idx, np.uint8)).save(root / dir_r / f"{key}.JPG")


def test_conversion_sections_and_geometry(tmp_path):
    make_raw(tmp_path / "raw")
    out = tmp_path / "out"
    assert cl.run(cl.COMBALLAZ, ["--dataset_dir", str(tmp_path / "raw"), "--out", str(out), "--focal", str(FOCAL),
                                 "--workers", "1"]) == 0
    scene = out / "comballaz"
    assert layout.is_complete(scene)
    sections = layout.list_sections(scene)
    assert {"train_sim", "val_sim", "train_drone_sim", "val_drone_sim", "test_drone_sim", "train_translated",
            "test_translated", "train_real", "val_real", "test_real", "train_sim_aug"} <= set(sections)
    n = {s: len(list((scene / s / "rgb").iterdir())) for s in sections}
    assert n["train_sim"] == 9 and n["val_sim"] == 1  # 90 / 10 of the 10 LHS renders
    assert n["train_drone_sim"] == 4 and n["val_drone_sim"] == 1 and n["test_drone_sim"] == 7  # 12 drone frames
    assert n["train_sim_aug"] == 9 + 4
    sim, real = SceneDataset(scene, "test_drone_sim"), SceneDataset(scene, "test_real", targets="none")
    assert sim.frames == real.frames and np.allclose(sim.poses, real.poses) and sim.targets == "init"
    # real photos resized to the render size
    assert real[0]["image"].shape == (1, H, W)
    for ds in (sim, SceneDataset(scene, "train_sim")):
        item = ds[0]
        mask = item["mask"].numpy()
        X = np.moveaxis(item["coords"].numpy().astype(np.float64), 0, -1)[mask]
        uv, z = g.project(X, item["pose"].numpy().astype(np.float64), item["K"].numpy().astype(np.float64))
        err = np.linalg.norm(uv - g.cell_centers(6, 9)[mask], axis=1)
        # the cloud is sampled at pixel (8j+4, 8i+4), whose centre is half a pixel right of and below
        # the cell centre: every target lands sqrt(0.5) px away, in that direction
        assert np.all(np.abs(err - math.sqrt(0.5)) < 0.02), err.max()
        assert np.allclose(uv - g.cell_centers(6, 9)[mask], 0.5, atol=0.02)
        # depth = camera z of the targets; normals = the plane's up vector (it faces the cameras)
        depth = np.load(next((ds.section_dir / "depth").glob(f"{item['name']}.npy")))
        assert np.allclose(depth[mask], z, rtol=1e-5) and np.all(depth[~mask] == 0)
        up = -cl.ned_in_ecef(*cl.COMBALLAZ.origin_lat_lon_alt[:2])[:, 2]
        normals = item["normals"].numpy()
        assert np.allclose(normals[:, mask], up[:, None], atol=2e-3)
    lhs_item = SceneDataset(scene, "train_sim")[0]
    assert not lhs_item["mask"].numpy()[0].any() and lhs_item["mask"].numpy()[1:].all()  # sky rows: no label
    # coordinates are local (origin subtracted): a few hundred metres, not thousands of kilometres
    assert np.abs(sim.poses[:, :3, 3]).max() < 1000

    # the split written into the scene reproduces itself through --split_dir
    out2 = tmp_path / "out2"
    cl.run(cl.COMBALLAZ, ["--dataset_dir", str(tmp_path / "raw"), "--out", str(out2), "--focal", str(FOCAL),
                          "--workers", "1", "--split_dir", str(scene), "--seed", "5"])
    for s in ("test_real", "val_sim"):
        assert SceneDataset(out2 / "comballaz", s, targets="none").frames == SceneDataset(scene, s, targets="none").frames


def test_errors(tmp_path):
    make_raw(tmp_path / "raw", frames_per_flight=2, lhs_frames=2)
    flight = tmp_path / "raw" / cl.COMBALLAZ.flights[1][1]
    np.save(next(flight.glob("*_00001_pc.npy")), np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match=r"flight1_00001_pc\.npy: point cloud shape \(4, 4, 3\) does not match"):
        cl.run(cl.COMBALLAZ, ["--dataset_dir", str(tmp_path / "raw"), "--out", str(tmp_path / "o"), "--workers", "1"])
    assert list((tmp_path / "o").iterdir()) == []
    real = tmp_path / "raw" / cl.COMBALLAZ.flights[2][5]
    next(real.glob("*.JPG")).unlink()
    with pytest.raises(ValueError, match=r"comballaz-phantom-survey-real: no real image for render"):
        cl.run(cl.COMBALLAZ, ["--dataset_dir", str(tmp_path / "raw"), "--out", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match=r"--drone_air2_real .*: raw data folder not found"):
        cl.run(cl.COMBALLAZ, ["--dataset_dir", str(tmp_path / "raw"), "--out", str(tmp_path / "o"),
                              "--drone_air2_real", "nowhere"])
