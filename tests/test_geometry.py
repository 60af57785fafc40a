import math

import numpy as np
import pytest
import torch

from transpose import geometry as g


def random_rotation(rng):
    q = rng.normal(size=4)
    return g.quat_to_rotmat(q / np.linalg.norm(q))


def test_quaternion_roundtrip_all_branches():
    rng = np.random.default_rng(0)
    rots = [random_rotation(rng) for _ in range(50)]
    # rotations by ~180 degrees exercise the non-trace branches
    rots += [g.rvec_to_rotmat(np.array(axis) * math.pi) for axis in ([1, 0, 0], [0, 1, 0], [0, 0, 1])]
    for R in rots:
        q = g.rotmat_to_quat(R)
        assert q[0] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        assert np.abs(g.quat_to_rotmat(q) - R).max() < 1e-10
        qt = g.rotmat_to_quat_torch(torch.from_numpy(R))
        assert np.abs(g.quat_to_rotmat(qt.numpy()) - R).max() < 1e-10


def test_quaternion_convention_is_wxyz():
    # 90 degrees about z: w = cos(45), z = sin(45)
    R = g.quat_to_rotmat([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)])
    assert np.allclose(R @ [1, 0, 0], [0, 1, 0])


def test_rvec_roundtrip_and_euler():
    rng = np.random.default_rng(1)
    for _ in range(20):
        rvec = rng.normal(size=3)
        rvec *= min(1.0, 3.0 / np.linalg.norm(rvec))
        assert np.allclose(g.rotmat_to_rvec(g.rvec_to_rotmat(rvec)), rvec, atol=1e-9)
        yaw, pitch, roll = rng.uniform(-170, 170), rng.uniform(-80, 80), rng.uniform(-170, 170)
        R = g.euler_zyx_to_rotmat(yaw, pitch, roll)
        assert np.allclose(g.rotmat_to_euler_zyx(R), (yaw, pitch, roll), atol=1e-9)


def test_pose_inverse_and_rigidity():
    rng = np.random.default_rng(2)
    T = g.make_pose(random_rotation(rng), rng.normal(size=3))
    assert np.allclose(g.invert_pose(T) @ T, np.eye(4), atol=1e-12)
    assert g.is_rigid(T)
    bad = T.copy()
    bad[:3, :3] *= 1.1
    with pytest.raises(ValueError, match="frame-1.pose.txt: not a rigid transform"):
        g.check_rigid(bad, "frame-1.pose.txt")
    with pytest.raises(ValueError, match="NaN"):
        g.check_rigid(np.full((4, 4), np.nan), "p")


def test_projection_backprojection_roundtrip():
    rng = np.random.default_rng(3)
    K = g.intrinsics_matrix(525.0, 520.0, 320.0, 240.0)
    T = g.make_pose(random_rotation(rng), rng.normal(size=3))
    depth = rng.uniform(1.0, 4.0, size=(6, 8))
    pix = g.cell_centers(6, 8, stride=8)
    world = g.backproject_depth(depth, K, T, pixels=pix)
    uv, z = g.project(world.reshape(-1, 3), T, K)
    assert np.allclose(uv, pix.reshape(-1, 2), atol=1e-9)
    assert np.allclose(z, depth.reshape(-1), atol=1e-9)
    # cell (i, j) sees pixel (8j + 4, 8i + 4)
    assert tuple(pix[2, 5]) == (44.0, 20.0)
    # a skewed camera: project applies K as a matrix, backproject_depth undoes it
    K_skew = K.copy()
    K_skew[0, 1] = 12.0
    world = g.backproject_depth(depth, K_skew, T, pixels=pix)
    uv, z = g.project(world.reshape(-1, 3), T, K_skew)
    assert np.allclose(uv, pix.reshape(-1, 2), atol=1e-9) and np.allclose(z, depth.reshape(-1), atol=1e-9)
    cam = g.transform_points(g.invert_pose(T), world.reshape(-1, 3))
    homogeneous = cam @ K_skew.T
    assert np.allclose(homogeneous[:, :2] / homogeneous[:, 2:], pix.reshape(-1, 2), atol=1e-9)
    torch = pytest.importorskip("torch")
    uv_torch = g.project_torch(torch.from_numpy(cam), torch.from_numpy(K_skew))
    assert np.allclose(uv_torch.numpy(), pix.reshape(-1, 2), atol=1e-9)
    batched = g.project_torch(torch.from_numpy(cam).expand(2, -1, -1), torch.from_numpy(np.stack([K, K_skew])))
    assert np.allclose(batched[1].numpy(), pix.reshape(-1, 2), atol=1e-9)
    assert not np.allclose(batched[0].numpy(), pix.reshape(-1, 2), atol=1e-3)   # no skew: pixels shift


def test_errors():
    R = g.rvec_to_rotmat([0, 0, math.radians(3.0)])
    T_a = g.make_pose(np.eye(3), [0, 0, 0])
    T_b = g.make_pose(R, [0.03, 0.04, 0])
    rot, trans = g.pose_errors(T_b, T_a)
    assert abs(rot - 3.0) < 1e-9 and abs(trans - 0.05) < 1e-12
    # clamped acos: identical rotations give exactly 0, never NaN
    assert g.rotation_error_deg(np.eye(3), np.eye(3) * (1 + 1e-12)) == 0.0
    Rt = torch.tensor(R)
    assert abs(g.rotation_error_deg_torch(Rt, torch.eye(3, dtype=torch.float64)).item() - 3.0) < 1e-4
    q = torch.tensor(g.rotmat_to_quat(R))
    assert abs(g.quat_angle_deg_torch(q, -torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)).item() - 3.0) < 1e-6


def test_cell_centers_torch_matches_numpy():
    assert np.array_equal(g.cell_centers_torch(3, 5, 8, dtype=torch.float64).numpy(), g.cell_centers(3, 5, 8))


def test_average_quaternions_numpy_and_torch():
    rng = np.random.default_rng(3)
    base = g.rotmat_to_quat(g.euler_zyx_to_rotmat(40.0, -20.0, 10.0))
    # +/- 30 deg about the camera z axis around the base, with one sample sign-flipped: the
    # eigenvector average is the base rotation; a plain mean of the raw quaternions would not be
    half = math.radians(30.0) / 2
    qa = np.array([math.cos(half), 0, 0, math.sin(half)])
    qb = np.array([math.cos(half), 0, 0, -math.sin(half)])

    def mul(p, q):  # Hamilton product (w, x, y, z)
        w1, x1, y1, z1 = p
        w2, x2, y2, z2 = q
        return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                         w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])

    samples = np.stack([mul(base, qa), -mul(base, qb)])
    mean = g.average_quaternions(samples)
    assert mean.shape == (4,) and mean[0] >= 0
    assert g.rotation_error_deg(g.quat_to_rotmat(mean), g.quat_to_rotmat(base)) < 1e-6
    assert np.linalg.norm(samples.mean(0) / np.linalg.norm(samples.mean(0)) - base) > 0.5
    # weights 3:1 on +/-30 deg: the top eigenvector of [[4c^2, 2cs], [2cs, 4s^2]] (c, s = cos, sin 15 deg)
    # in the (w, z) plane sits at half-angle phi with tan(2 phi) = tan(30 deg) / 2, i.e. 16.10 deg of rotation
    mean_w = g.average_quaternions(np.stack([mul(base, qa), mul(base, qb)]), np.array([3.0, 1.0]))
    angle = g.rotation_error_deg(g.quat_to_rotmat(mean_w), g.quat_to_rotmat(base))
    assert abs(angle - math.degrees(math.atan(math.tan(math.radians(30.0)) / 2))) < 1e-6
    # batched, scale-invariant, and the torch twin agrees
    batch = rng.normal(size=(5, 7, 4))
    ref = g.average_quaternions(batch)
    assert ref.shape == (5, 4) and np.allclose(np.linalg.norm(ref, axis=-1), 1.0)
    assert np.allclose(g.average_quaternions(batch * 3.0), ref, atol=1e-9)
    assert np.allclose(g.average_quaternions_torch(torch.from_numpy(batch)).numpy(), ref, atol=1e-9)
    with pytest.raises(ValueError, match="expected"):
        g.average_quaternions(np.ones(3))
