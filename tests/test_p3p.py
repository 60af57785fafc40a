"""Lambda Twist P3P on exact data: the true pose is among the solutions, every solution is valid."""
import numpy as np
import pytest

from transpose import geometry as g
from transpose import ransac


def random_setup(rng):
    R = g.quat_to_rotmat(rng.normal(size=4))
    t = rng.normal(size=3) + np.array([0.0, 0.0, 3.0])
    # points in front of the camera, spread over a 60-degree field of view, 1-10 m deep
    depth = rng.uniform(1.0, 10.0, size=3)
    dirs = np.c_[rng.uniform(-0.6, 0.6, size=(3, 2)), np.ones(3)]
    cam = dirs * depth[:, None]
    world = (cam - t) @ R  # x_cam = R X + t
    return R, t, cam, world


def test_true_pose_is_among_solutions():
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(300):
        R, t, cam, world = random_setup(rng)
        bearings = cam * rng.uniform(0.2, 3.0, size=(3, 1))  # any positive length works
        sols = ransac.p3p(bearings, world)
        assert 1 <= len(sols) <= 4
        err = min(max(np.abs(Rs - R).max(), np.abs(ts - t).max() / np.linalg.norm(t)) for Rs, ts in sols)
        worst = max(worst, err)
        for Rs, ts in sols:
            # every solution is a rotation that puts the 3 points on their rays, in front
            assert np.abs(Rs.T @ Rs - np.eye(3)).max() < 1e-9
            assert abs(np.linalg.det(Rs) - 1.0) < 1e-9
            pc = world @ Rs.T + ts
            assert np.all(pc[:, 2] > 0)
            cosines = np.sum(pc / np.linalg.norm(pc, axis=1, keepdims=True)
                             * cam / np.linalg.norm(cam, axis=1, keepdims=True), axis=1)
            assert np.all(cosines > 1 - 1e-12)
    assert worst < 1e-8


def test_symmetric_configuration_gives_multiple_solutions():
    # An equilateral triangle seen head-on is a classic multi-solution case for P3P.
    world = np.array([[1.0, 0.0, 0.0], [-0.5, np.sqrt(3) / 2, 0.0], [-0.5, -np.sqrt(3) / 2, 0.0]])
    R = np.eye(3)
    t = np.array([0.0, 0.0, 4.0])
    cam = world @ R.T + t
    sols = ransac.p3p(cam, world)
    assert len(sols) >= 2
    assert min(np.abs(Rs - R).max() + np.abs(ts - t).max() for Rs, ts in sols) < 1e-8


def test_degenerate_inputs():
    world = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])  # collinear
    cam = np.array([[0.1, 0.0, 1.0], [0.0, 0.1, 1.0], [0.1, 0.1, 1.0]])
    assert ransac.p3p(cam, world) == []
    with pytest.raises(ValueError, match="bearings"):
        ransac.p3p(np.zeros((2, 3)), world)
    with pytest.raises(ValueError, match="points"):
        ransac.p3p(cam, np.full((3, 3), np.nan))


def test_random_inputs_give_only_rotations():
    # Unrelated bearings and points: any solution returned must still be a proper rigid pose
    # (spurious roots of near-degenerate configurations are rejected, never returned sheared).
    rng = np.random.default_rng(1)
    count = 0
    for _ in range(3000):
        bearings = np.c_[rng.uniform(-0.6, 0.6, size=(3, 2)), np.ones(3)]
        world = rng.normal(size=(3, 3))
        for Rs, ts in ransac.p3p(bearings, world):
            count += 1
            assert np.abs(Rs.T @ Rs - np.eye(3)).max() < 1e-6 and np.linalg.det(Rs) > 0
            pc = world @ Rs.T + ts
            cosines = np.sum(pc / np.linalg.norm(pc, axis=1, keepdims=True)
                             * bearings / np.linalg.norm(bearings, axis=1, keepdims=True), axis=1)
            assert np.all(cosines > 1 - 1e-9)
    assert count > 3000
