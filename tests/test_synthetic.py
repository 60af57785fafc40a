"""The procedural renderer: exact geometry, texture bound to surface points, two looks, complete folders."""
import time

import numpy as np
import pytest

from transpose import geometry as g
from transpose.data import layout
from transpose.data import synthetic as S

W, H = 160, 120


@pytest.fixture(scope="module")
def indoor_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "synthetic_indoor"
    start = time.perf_counter()
    S.render_scene(out, "indoor", frames=20, width=W, height=H, seed=0, progress=False)
    return out, time.perf_counter() - start


@pytest.fixture(scope="module")
def outdoor_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "synthetic_outdoor"
    S.render_scene(out, "outdoor", frames=8, width=W, height=H, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def indoor_scene():
    return S.build_scene("indoor", 0, W)


def _read_section(scene_dir, section):
    sec = layout.section_dir(scene_dir, section)
    frames = {}
    for key, rgb_path in layout.index_folder(sec / "rgb").items():
        rgb = layout.read_image(rgb_path)
        h, w = rgb.shape[:2]
        depth_path = layout.index_folder(sec / "depth")[key]
        frames[key] = dict(
            rgb=rgb, pose=layout.read_pose(sec / "poses" / f"{key}.txt"),
            K=layout.read_calibration(sec / "calibration" / f"{key}.txt", w, h),
            depth=layout.read_depth(depth_path), init=layout.read_coords(sec / "init" / f"{key}.npy"),
            normal=layout.read_normals(sec / "normal" / f"{key}.npy"))
    return frames


def test_tiny_scene_is_fast_complete_and_readable(indoor_dir):
    out, seconds = indoor_dir
    assert seconds < 20.0  # a few seconds on a free core; generous for a shared machine
    assert layout.is_complete(out)
    assert sorted(layout.list_sections(out)) == sorted(S.SECTIONS)
    counts = S.frame_counts(20)
    assert counts == {"train_sim": 15, "test_sim": 5, "train_real": 2, "test_real": 5}
    sim = _read_section(out, "train_sim")
    assert len(sim) == 15
    for section, n in counts.items():
        frames = _read_section(out, section)
        assert len(frames) == n
        for f in frames.values():
            assert f["rgb"].shape == (H, W, 3) and f["depth"].shape == (H, W)
            assert f["init"].shape == (3, H // 8, W // 8) and f["normal"].shape == (3, H // 8, W // 8)
            assert np.allclose(f["K"], S.intrinsics(W, H))
            assert 0.3 < f["depth"].min() and f["depth"].max() < 8.0  # closed room: every pixel hits
    # real frames are near (not at) the sim frame with the same key
    real = _read_section(out, "train_real")
    assert set(real) <= set(sim)
    for key, f in real.items():
        rot, trans = g.pose_errors(f["pose"], sim[key]["pose"])
        assert 1e-3 < trans < 0.25 and rot < 8.0
    assert not list(out.parent.glob(".synthetic_indoor.partial-*"))


def test_coordinates_project_to_cell_centres_with_map_depth(indoor_dir, outdoor_dir):
    for scene_dir, sections in ((indoor_dir[0], ("train_sim", "test_real")), (outdoor_dir, ("test_sim",))):
        for section in sections:
            for key, f in _read_section(scene_dir, section).items():
                X = np.moveaxis(f["init"], 0, -1).reshape(-1, 3)
                valid = np.any(X != 0, axis=1)
                assert valid.mean() > 0.9
                centres = g.cell_centers(H // 8, W // 8).reshape(-1, 2)
                uv, z = g.project(X[valid], f["pose"], f["K"])
                assert np.abs(uv - centres[valid]).max() < 1e-3, (scene_dir, section, key)
                d = f["depth"][4::8, 4::8].reshape(-1)[valid]
                ok = d > 0
                assert ok.mean() > 0.9
                # mm quantisation of the PNG (indoor), float32 metres outdoors
                assert np.abs(d[ok] - z[ok]).max() <= 0.0005 + 1e-5 * z[ok].max()


def test_normals_are_unit_and_face_the_camera(indoor_dir, outdoor_dir):
    for scene_dir in (indoor_dir[0], outdoor_dir):
        for f in _read_section(scene_dir, "test_sim").values():
            n = np.moveaxis(f["normal"], 0, -1).reshape(-1, 3).astype(np.float64)
            X = np.moveaxis(f["init"], 0, -1).reshape(-1, 3)
            valid = np.any(X != 0, axis=1)
            assert np.abs(np.linalg.norm(n[valid], axis=1) - 1).max() < 2e-3  # stored as float16
            view = X[valid] - f["pose"][:3, 3]
            cos = np.einsum("ij,ij->i", n[valid], view) / np.linalg.norm(view, axis=1)
            assert cos.max() < 0.0
            assert np.all(n[~valid] == 0)


def test_same_seed_same_bytes_other_seed_other_scene(tmp_path):
    def render(seed, name, workers=1):
        out = S.render_scene(tmp_path / name, "indoor", frames=4, width=64, height=48, seed=seed, progress=False,
                             workers=workers)
        return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
                and p.name != layout.COMPLETE_MARKER}

    a, b, c = render(0, "a"), render(0, "b", workers=2), render(1, "c")
    assert set(a) == set(b) == set(c) and len(a) == 6 * 6  # 3 + 1 sim, 1 + 1 real frames, 6 files each
    assert all(a[k] == b[k] for k in a)  # also with two worker processes
    rgb = [k for k in a if k.parts[1] == "rgb"]
    assert all(a[k] != c[k] for k in rgb)


def test_albedo_is_a_function_of_the_surface_point(indoor_scene):
    """A point seen in a train view has the same sim colour in a test view that sees it.

    The test camera's principal point is shifted by a sub-pixel amount so that the point falls exactly
    on a pixel centre: then that pixel's ray hits the very same surface point.
    """
    K = S.intrinsics(W, H)
    train = S.trajectory("indoor", "train", 30, 0)
    test = S.trajectory("indoor", "test", 10, 0)
    rng = np.random.default_rng(0)
    checked = 0
    diffs = []
    for i in range(0, 30, 3):
        a = S.render_view(indoor_scene, train[i], K, W, H, "sim")
        for j in range(10):
            X = a["points"][4::8, 4::8].reshape(-1, 3)
            rgb_a = a["rgb"][4::8, 4::8].reshape(-1, 3)
            uv, z = g.project(X, test[j], K)
            inside = (uv[:, 0] > 1) & (uv[:, 0] < W - 2) & (uv[:, 1] > 1) & (uv[:, 1] < H - 2) & (z > 0)
            if not inside.any():
                continue
            k = rng.choice(np.flatnonzero(inside))
            pix = np.round(uv[k])
            K_b = K.copy()
            K_b[:2, 2] += pix - uv[k]
            b = S.render_view(indoor_scene, test[j], K_b, W, H, "sim")
            r, c = int(pix[1]), int(pix[0])
            if np.linalg.norm(b["points"][r, c] - X[k]) > 1e-6:
                continue  # occluded in the test view
            assert abs(b["depth"][r, c] - z[k]) < 1e-6
            diffs.append(np.abs(b["rgb"][r, c].astype(int) - rgb_a[k].astype(int)).max())
            checked += 1
            break
    assert checked >= 5
    assert max(diffs) <= 1  # float rounding at most one grey level


def test_written_train_and_test_views_overlap(indoor_dir):
    """Test cells re-projected into the train frames land on the same surface (train depth agrees)."""
    out = indoor_dir[0]
    train, test = _read_section(out, "train_sim"), _read_section(out, "test_sim")
    seen_fraction = []
    for f in test.values():
        X = np.moveaxis(f["init"], 0, -1).reshape(-1, 3)
        seen = np.zeros(len(X), bool)
        for t in train.values():
            uv, z = g.project(X, t["pose"], t["K"])
            px = np.round(uv).astype(int)
            inside = (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H) & (z > 0)
            d = np.zeros(len(X))
            d[inside] = t["depth"][px[inside, 1], px[inside, 0]]
            seen |= inside & (np.abs(d - z) < 0.05)
        seen_fraction.append(seen.mean())
    assert np.mean(seen_fraction) > 0.5
    # ... from a different path: no test camera sits on a train camera
    centres_train = np.array([t["pose"][:3, 3] for t in train.values()])
    for f in test.values():
        assert np.linalg.norm(centres_train - f["pose"][:3, 3], axis=1).min() > 0.02


def test_sim_and_real_share_geometry_but_not_appearance(indoor_scene):
    K = S.intrinsics(W, H)
    T = S.trajectory("indoor", "test", 5, 0)[2]
    sim = S.render_view(indoor_scene, T, K, W, H, "sim")
    real = S.render_view(indoor_scene, T, K, W, H, "real", np.random.default_rng(1))
    real2 = S.render_view(indoor_scene, T, K, W, H, "real", np.random.default_rng(2))
    assert np.array_equal(sim["depth"], real["depth"]) and np.array_equal(sim["points"], real["points"])
    diff = np.abs(sim["rgb"].astype(float) - real["rgb"].astype(float))
    assert diff.mean() > 10.0
    assert np.abs(real["rgb"].astype(float) - real2["rgb"].astype(float)).mean() > 2.0  # per-frame camera
    # the real look is lit: surfaces facing the light are brighter than those turned away, which sim ignores
    assert not np.array_equal(real["rgb"], real2["rgb"])


@pytest.mark.parametrize("prim", [
    S.Box((0.3, -0.2, 0.5), (0.4, 0.3, 0.5), 0.4, [S.Texture(np.zeros((2, 2, 3), np.float32), 1.0)] * 6),
    S.Sphere((0.1, 0.2, 0.4), 0.45, S.Texture(np.zeros((2, 2, 3), np.float32), 1.0, True)),
    S.Cylinder((-0.2, 0.1, 0.0), 0.35, 0.9, [S.Texture(np.zeros((2, 2, 3), np.float32), 1.0, True)] +
               [S.Texture(np.zeros((2, 2, 3), np.float32), 1.0)] * 2),
])
def test_primitive_hit_is_the_first_surface_point(prim):
    """Hits lie on the surface, no point of the ray before the hit is inside, and normals point out."""
    rng = np.random.default_rng(3)
    centre, radius = prim.bounding_sphere()
    origins = centre + rng.normal(size=(400, 3)) * 0.2 + np.array([2.5, 0.0, 0.8])
    targets = centre + rng.normal(size=(400, 3)) * radius * 0.6
    d = targets - origins
    t = prim.intersect(origins, d)
    hit = np.isfinite(t)
    assert 0.3 < hit.mean() < 1.0
    p = origins[hit] + t[hit, None] * d[hit]

    def inside(q):
        if isinstance(prim, S.Sphere):
            return np.linalg.norm(q - prim.centre, axis=-1) < prim.radius - 1e-9
        if isinstance(prim, S.Box):
            return np.all(np.abs((q - prim.centre) @ prim.R) < prim.half - 1e-9, axis=-1)
        rel = q - prim.base
        return (np.hypot(rel[..., 0], rel[..., 1]) < prim.radius - 1e-9) & (rel[..., 2] > 1e-9) & \
            (rel[..., 2] < prim.height - 1e-9)

    # on the surface: just after the hit is inside, just before is outside
    unit = d[hit] / np.linalg.norm(d[hit], axis=1, keepdims=True)
    assert inside(p + 1e-6 * unit).mean() > 0.95 and not inside(p - 1e-6 * unit).any()
    fractions = np.linspace(0, 1, 50, endpoint=False)[:, None, None]
    along = origins[hit] + fractions * (t[hit, None] * d[hit])
    assert not inside(along).any()
    n, _ = prim.shade(p)
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0)
    assert np.all(np.einsum("ij,ij->i", n, d[hit]) < 0)  # outward normals face the incoming ray
    # rays that miss never come near the inside
    miss = ~hit
    along = origins[miss] + np.linspace(0, 3, 200)[:, None, None] * d[miss]
    assert not inside(along).any()


def test_outdoor_drone_altitude_and_terrain_hits(outdoor_dir):
    scene = S.build_scene("outdoor", 0, W)
    terrain = scene.primitives[0]
    for f in _read_section(outdoor_dir, "train_sim").values():
        c = f["pose"][:3, 3]
        altitude = c[2] - terrain.height(c[:1], c[1:2])[0]
        assert 30.0 <= altitude <= 80.0
        assert np.abs(c[:2]).max() < 150.0
        forward = f["pose"][:3, 2]
        pitch = np.degrees(np.arcsin(-forward[2]))
        assert 25.0 < pitch < 70.0  # looking obliquely down
        X = np.moveaxis(f["init"], 0, -1).reshape(-1, 3)
        X = X[np.any(X != 0, axis=1)]
        on_ground = np.abs(X[:, 2] - terrain.height(X[:, 0], X[:, 1])) < 1e-3
        assert on_ground.mean() > 0.5  # the rest are buildings
        d = f["depth"][f["depth"] > 0]
        assert d.min() > 20.0 and d.max() < 400.0


def test_command_line(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--tiny", "--frames", "4", "--width", "64", "--height", "48"]
    stale = tmp_path / ".synthetic_indoor.partial-2147483646"  # left by a killed render (no such process)
    (stale / "train_sim" / "rgb").mkdir(parents=True)
    S.main(args)
    assert not stale.exists()
    assert layout.is_complete(tmp_path / "synthetic_indoor")
    with pytest.raises(SystemExit, match="synthetic_indoor already holds a complete scene; pass"):
        S.main(args)
    S.main(args + ["--force"])
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="width: must be a multiple of 8"):
        S.main(["--out", str(tmp_path / "x"), "--width", "100"])
    with pytest.raises(ValueError, match="kind: expected one of indoor, outdoor"):
        S.render_scene(tmp_path / "y", "cave")


def test_look_at_points_the_optical_axis_at_the_target():
    eye, target = np.array([1.0, -2.0, 1.5]), np.array([-0.5, 1.0, 0.7])
    T = S.look_at(eye, target, roll_deg=0.0)
    assert g.is_rigid(T, 1e-9)
    K = S.intrinsics(W, H)
    uv, z = g.project(np.array([target, target + [0, 0, 0.3]]), T, K)
    assert np.allclose(uv[0], [W / 2, H / 2], atol=1e-9) and np.isclose(z[0], np.linalg.norm(target - eye))
    assert uv[1, 1] < H / 2 and abs(uv[1, 0] - W / 2) < 1e-9  # world up is image up (y down)
    rolled = S.look_at(eye, target, roll_deg=10.0)
    assert np.isclose(g.rotation_error_deg(T[:3, :3], rolled[:3, :3]), 10.0)
    assert np.allclose(rolled[:3, 2], T[:3, 2])  # roll keeps the viewing axis
