"""View overlap (frustum, NSO), k-reciprocal pair mining and its cache."""
import math

import numpy as np
import pytest
import torch

from transpose import geometry
from transpose.data import overlap as ov

W, H = 64, 48
K = geometry.intrinsics_from_focal(50.0, W, H)


def look_along_z(centre, yaw_deg=0.0):
    """Camera at ``centre`` looking along +z (rotated by ``yaw_deg`` about the y axis)."""
    a = math.radians(yaw_deg)
    R = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    return geometry.make_pose(R, centre)


def wall_points(T_c2w, depth_to_wall=5.0, stride=8):
    """World points ``(P, 3)`` the camera sees on the plane z = camera z + depth (one per cell)."""
    h, w = H // stride, W // stride
    d = np.full((h, w), depth_to_wall)
    pts = geometry.backproject_depth(d, K, T_c2w, pixels=geometry.cell_centers(h, w, stride))
    return pts.reshape(-1, 3)


def geom_of(poses, domains=None):
    pts = np.stack([wall_points(T) for T in poses]).astype(np.float32)
    normals = np.zeros_like(pts)
    normals[..., 2] = -1.0
    N = len(poses)
    return ov.FrameGeometry(names=[str(i) for i in range(N)],
                            domains=np.zeros(N, np.int64) if domains is None else np.asarray(domains),
                            domain_names=["sim", "real"], points=pts, normals=normals,
                            poses=np.stack(poses), K=np.repeat(K[None], N, 0),
                            sizes=np.repeat([[H, W]], N, 0))


def test_frustum_overlap_self_is_one_and_facing_away_is_zero():
    T = look_along_z([0.0, 0.0, 0.0])
    away = look_along_z([0.0, 0.0, 0.0], yaw_deg=180.0)
    side = look_along_z([0.0, 0.0, 0.0], yaw_deg=90.0)
    g = geom_of([T, away, side])
    O = ov.frustum_overlap_matrix(g)
    assert O[0, 0] == pytest.approx(1.0)
    assert O[1, 1] == pytest.approx(1.0)
    assert O[0, 1] == 0.0 and O[1, 0] == 0.0
    assert O[0, 2] == 0.0  # 90 degrees: a 63-degree field of view sees none of the other wall


def test_frustum_overlap_matches_a_per_point_count():
    rng = np.random.default_rng(3)
    poses = [look_along_z(rng.normal(0, 0.5, 3), rng.uniform(-40, 40)) for _ in range(5)]
    g = geom_of(poses)
    g.points[1, 5:9] = np.nan  # padding cells must not count
    O = ov.frustum_overlap_matrix(g, budget=200)  # tiny budget: several chunks
    for i in range(5):
        pts = g.points[i][np.isfinite(g.points[i]).all(1)]
        for j in range(5):
            uv, z = geometry.project(pts, poses[j], K)
            seen = (z > 0.1) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
            assert O[i, j] == pytest.approx(seen.mean(), abs=1e-6)


def test_frustum_overlap_shifted_camera_sees_the_expected_share():
    # moving the camera by a quarter of the visible wall width leaves 3/4 of the cells visible
    T0 = look_along_z([0.0, 0.0, 0.0])
    visible_width = W / K[0, 0] * 5.0
    T1 = look_along_z([visible_width / 4, 0.0, 0.0])
    O = ov.frustum_overlap_matrix(geom_of([T0, T1]))
    assert O[0, 1] == pytest.approx(0.75)
    assert O[1, 0] == pytest.approx(0.75)


def grid_cloud(nx, ny, spacing=0.05):
    x, y = np.meshgrid(np.arange(nx) * spacing, np.arange(ny) * spacing)
    pts = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], 1)
    normals = np.tile([0.0, 0.0, 1.0], (len(pts), 1))
    return torch.tensor(pts)[None], torch.tensor(normals)[None]


def test_nso_identical_is_one_and_half_cloud_is_asymmetric():
    full_p, full_n = grid_cloud(10, 10)
    ab, ba = ov.normalized_surface_overlap(full_p, full_n, full_p, full_n, radius=0.01)
    assert ab.item() == pytest.approx(1.0) and ba.item() == pytest.approx(1.0)
    keep = full_p[0, :, 0] < 0.05 * 5 - 1e-9  # the left five columns
    half_p, half_n = full_p[:, keep], full_n[:, keep]
    h2f, f2h = ov.normalized_surface_overlap(half_p, half_n, full_p, full_n, radius=0.01)
    assert h2f.item() == pytest.approx(1.0)   # all of the half is in the full cloud
    assert f2h.item() == pytest.approx(0.5)   # half of the full cloud is in the half


def test_nso_weights_matches_by_normal_agreement_and_ignores_padding():
    p, n = grid_cloud(4, 4)
    tilted = n.clone()
    tilted[..., :] = torch.tensor([0.0, math.sin(math.pi / 3), math.cos(math.pi / 3)])  # 60 degrees
    ab, _ = ov.normalized_surface_overlap(p, n, p, tilted, radius=0.01)
    assert ab.item() == pytest.approx(0.5 * (1 + math.cos(math.pi / 3)))
    padded = torch.cat([p, torch.full((1, 5, 3), float("nan"))], 1)
    padded_n = torch.cat([n, torch.zeros(1, 5, 3)], 1)
    ab, ba = ov.normalized_surface_overlap(padded, padded_n, p, n, radius=0.01)
    assert ab.item() == pytest.approx(1.0) and ba.item() == pytest.approx(1.0)
    far = p + 1.0
    ab, _ = ov.normalized_surface_overlap(p, n, far, n, radius=0.01)
    assert ab.item() == 0.0


def test_nso_matrix_agrees_with_pairwise_and_frustum_on_a_trajectory():
    spacing = 8 / K[0, 0] * 5.0  # cell columns are 0.8 m apart on the wall: shift by whole columns
    poses = [look_along_z([spacing * k, 0.0, 0.0]) for k in range(4)]
    g = geom_of(poses)
    S = ov.nso_matrix(g, radius=0.1, budget=100)
    np.testing.assert_allclose(np.diag(S), 1.0)
    ab, ba = ov.normalized_surface_overlap(torch.from_numpy(g.points[:1]), torch.from_numpy(g.normals[:1]),
                                           torch.from_numpy(g.points[2:3]), torch.from_numpy(g.normals[2:3]), 0.1)
    assert S[0, 2] == pytest.approx(ab.item()) and S[2, 0] == pytest.approx(ba.item())
    # k columns shifted out of 8: (8 - k) / 8 of the cells still have a partner, both ways
    for k in range(4):
        assert S[0, k] == pytest.approx((8 - k) / 8) and S[k, 0] == pytest.approx((8 - k) / 8)


def trajectory_with_real(n=12, step=0.3, real_near=(3, 8)):
    """Sim cameras on a line facing a wall, plus real cameras a few cm from some sim ones."""
    poses = [look_along_z([step * k, 0.0, 0.0]) for k in range(n)]
    poses += [look_along_z([step * k + 0.02, 0.01, 0.0], yaw_deg=1.0) for k in real_near]
    domains = [0] * n + [1] * len(real_near)
    return poses, domains


def test_reranked_positives_are_true_neighbours_on_a_trajectory():
    poses, domains = trajectory_with_real()
    g = geom_of(poses, domains)
    O = ov.frustum_overlap_matrix(g)
    n_sim = 12
    # in-domain: the two closest of 11 candidates (ceil(0.15 * 11) = 2) both ways
    cfg = ov.MiningConfig(pos_forward=0.15, pos_backward=0.15, neg_forward=0.2, neg_backward=0.2)
    m = ov.mine_pairs(O, g.poses, g.domains, cfg, g.names, g.domain_names)
    for k in range(1, n_sim - 1):
        assert sorted(m.get("pos_same", k).tolist()) == [k - 1, k + 1]
    # the ends: 0's candidates are 1 and 2, but 0 is not among 2's two closest (1 and 3): reciprocity drops 2
    assert m.get("pos_same", 0).tolist() == [1]
    assert m.get("pos_same", n_sim - 1).tolist() == [n_sim - 2]
    # cross-domain (12 sim candidates: the closest two): first the sim frame each real frame was
    # jittered from, then the next one in the direction of the 2 cm shift; and back (closest one)
    assert m.get("pos_cross", n_sim).tolist() == [3, 4]
    assert m.get("pos_cross", n_sim + 1).tolist() == [8, 9]
    assert m.get("pos_cross", 3).tolist() == [n_sim]
    assert m.get("pos_cross", 0).size == 0  # the closest real frame of frame 0 is 3 steps away: not reciprocal
    # negatives: the far end of the line, never a positive, both ways
    neg0 = set(m.get("neg_same", 0).tolist())
    assert neg0 and min(neg0) >= n_sim - 3
    assert 0 in set(m.get("neg_same", n_sim - 1).tolist())
    P = m.positive_matrix()
    assert (P == P.T).all() and not P.diagonal().any()
    assert not (P[0] & np.isin(np.arange(len(P)), list(neg0))).any()
    # a camera-distance limit removes positives farther than it
    m2 = ov.mine_pairs(O, g.poses, g.domains, ov.MiningConfig(pos_forward=0.15, pos_backward=0.15,
                                                              pos_max_trans=0.1), g.names, g.domain_names)
    assert m2.get("pos_same", 5).size == 0 and m2.get("pos_cross", n_sim).tolist() == [3]
    assert m2.get("pos_cross", 4).size == 0


def test_domain_ranks_hand_example():
    d = np.array([[0, 1, 3, 2], [1, 0, 1, 5], [3, 1, 0, 4], [2, 5, 4, 0]], float)
    rank, counts = ov.domain_ranks(d, np.array([0, 0, 1, 1]))
    # anchor 0: domain 0 candidates {1}; domain 1 candidates {2 (3), 3 (2)} -> 3 first
    assert rank[0, 1] == 0 and rank[0, 3] == 0 and rank[0, 2] == 1
    assert counts.tolist() == [[1, 2], [1, 2], [2, 1], [2, 1]]


def test_mining_config_and_inputs_are_checked():
    with pytest.raises(ValueError, match="pos_forward"):
        ov.MiningConfig(pos_forward=0.0).validate()
    with pytest.raises(ValueError, match="overlap must be"):
        ov.MiningConfig(overlap="iou").validate()
    with pytest.raises(ValueError, match="must agree"):
        ov.mine_pairs(np.zeros((3, 3)), np.tile(np.eye(4), (2, 1, 1)), np.zeros(3), ov.MiningConfig())
    with pytest.raises(ValueError, match="radius"):
        ov.normalized_surface_overlap(*grid_cloud(2, 2), *grid_cloud(2, 2), radius=0.0)


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    from transpose.data.synthetic import render_scene

    root = tmp_path_factory.mktemp("overlap")
    return render_scene(root / "tiny", "indoor", frames=24, width=96, height=72, seed=0, progress=False)


def test_mine_scene_on_a_rendered_scene_and_its_cache(tiny_scene):
    cfg = ov.MiningConfig(overlap="both", cells=64, pos_forward=0.2, pos_backward=0.3)
    m = ov.mine_scene(tiny_scene, ("train_sim", "train_real"), cfg)
    n_sim = 18
    assert m.names[:2] == ["train_sim/frame-000000", "train_sim/frame-000001"]
    assert m.names[n_sim:] == ["train_real/frame-000000", "train_real/frame-000010"]
    assert m.domain_names == ["sim", "real"] and m.domains.tolist() == [0] * n_sim + [1, 1]
    np.testing.assert_allclose(np.diag(m.overlap), 1.0, atol=1e-6)
    # each real frame is a few cm from the sim frame with its key: its closest cross-domain positive
    assert m.get("pos_cross", n_sim)[0] == m.names.index("train_sim/frame-000000")
    assert m.get("pos_cross", n_sim + 1)[0] == m.names.index("train_sim/frame-000010")
    files = list((tiny_scene / "pairs").glob("train_sim+train_real_*.npz"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    again = ov.mine_scene(tiny_scene, ("train_sim", "train_real"), cfg)
    assert files[0].stat().st_mtime_ns == stamp  # read from the cache, not recomputed
    np.testing.assert_array_equal(again.overlap, m.overlap)
    for kind in ov.LIST_KINDS:
        for i in range(len(m)):
            np.testing.assert_array_equal(again.get(kind, i), m.get(kind, i))
    # another setting gets its own cache file
    ov.mine_scene(tiny_scene, ("train_sim", "train_real"), ov.MiningConfig(cells=32))
    assert len(list((tiny_scene / "pairs").glob("*.npz"))) == 2


def test_geometry_from_depth_matches_the_coordinate_maps(tiny_scene, tmp_path):
    import shutil

    from transpose.data import layout

    src = layout.section_dir(tiny_scene, "train_sim")
    dst = tmp_path / "depth_only" / "train_sim"
    for folder in ("rgb", "poses", "calibration", "depth"):  # no init/, no normal/
        shutil.copytree(src / folder, dst / folder)
    from_init = ov.load_frame_geometry(tiny_scene, ["train_sim"], cells=10_000)
    from_depth = ov.load_frame_geometry(tmp_path / "depth_only", ["train_sim"], cells=10_000)
    assert from_init.names == from_depth.names and from_init.domain_names == ["sim"]
    # every cell is drawn (cells > cells per frame), in the same order: compare cell by cell
    vi, vd = from_init.valid(), from_depth.valid()
    assert (vi == vd).mean() > 0.99
    both = vi & vd
    gap = np.linalg.norm(from_init.points[both] - from_depth.points[both], axis=-1)
    assert np.median(gap) < 2e-3 and np.percentile(gap, 95) < 1e-2  # mm depth PNG vs exact coordinates
    # normals estimated from the point grid agree (up to sign) with the rendered ones on flat surfaces
    ni, nd = from_init.normals[both], from_depth.normals[both]
    ok = np.isfinite(nd).all(1) & np.isfinite(ni).all(1)
    cos = np.abs((ni[ok] * nd[ok]).sum(1))
    assert ok.mean() > 0.6 and np.median(cos) > 0.99


def test_normals_from_points_of_a_tilted_plane():
    x, y = np.meshgrid(np.arange(6.0), np.arange(5.0))
    z = 0.5 * x - 0.25 * y
    n = ov.normals_from_points(np.stack([x, y, z], -1))
    expected = np.array([-0.5, 0.25, 1.0]) / np.linalg.norm([-0.5, 0.25, 1.0])
    inner = n[1:-1, 1:-1].reshape(-1, 3)
    np.testing.assert_allclose(np.abs(inner @ expected), 1.0, atol=1e-12)
    assert np.isnan(n[0]).all() and np.isnan(n[:, -1]).all()  # borders lack a neighbour
