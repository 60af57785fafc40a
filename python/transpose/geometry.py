"""Geometry conventions: the one home for rotations, poses, cameras and pose errors.

Conventions used everywhere in transpose:

- Camera: OpenCV pinhole, x right, y down, z forward. ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
- Poses: ``T_c2w`` is the 4x4 camera-to-world (camera-to-scene) matrix, in metres, as DSAC* and
  7-Scenes write them. ``T_w2c = inv(T_c2w)``; a world point X maps to the camera as
  ``x_cam = R_w2c @ X + t_w2c``.
- Quaternions: ``(w, x, y, z)``, unit norm, sign chosen with ``w >= 0``.
- Rotation error: geodesic angle in degrees, ``acos`` argument clamped to [-1, 1].
- Translation error: distance between camera centres, in metres.
- Coordinate maps: float32 ``(3, H/8, W/8)``; cell ``(i, j)`` sees the pixel
  ``(x, y) = (stride * j + stride / 2, stride * i + stride / 2)``.

Functions accept numpy arrays (float64 results) unless their name ends in ``_torch``; the torch
variants are differentiable and batched over leading dimensions.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

try:  # torch is a dependency, but geometry must import without it (setup scripts, benchmarks)
    import torch
except ImportError:  # pragma: no cover
    torch = None

__all__ = [
    "intrinsics_matrix", "intrinsics_from_focal", "check_intrinsics", "cell_centers",
    "make_pose", "invert_pose", "check_rigid", "is_rigid",
    "quat_to_rotmat", "rotmat_to_quat", "rvec_to_rotmat", "rotmat_to_rvec", "average_quaternions",
    "euler_zyx_to_rotmat", "rotmat_to_euler_zyx",
    "transform_points", "project", "backproject_depth",
    "rotation_error_deg", "translation_error", "pose_errors",
    "quat_to_rotmat_torch", "rotmat_to_quat_torch", "rotation_error_deg_torch",
    "quat_angle_deg_torch", "average_quaternions_torch", "transform_points_torch", "project_torch", "cell_centers_torch",
]


# --------------------------------------------------------------------------- cameras

def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """3x3 pinhole matrix from focal lengths and principal point (pixels)."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def intrinsics_from_focal(focal: float, width: int, height: int) -> np.ndarray:
    """K for a single focal length: fx = fy = focal, principal point at the image centre."""
    return intrinsics_matrix(focal, focal, width / 2.0, height / 2.0)


def check_intrinsics(K: np.ndarray, name: str = "K") -> np.ndarray:
    """Return K as float64 (3, 3); raise ValueError naming ``name`` when it is not a pinhole matrix."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"{name}: expected a 3x3 intrinsics matrix, got shape {K.shape}")
    # Checked on Python floats: nine numpy scalar look-ups cost more than the whole pose solver's setup.
    values = K.ravel().tolist()
    fx, _, _, k10, fy, _, k20, k21, k22 = values
    if not all(map(math.isfinite, values)):
        raise ValueError(f"{name}: intrinsics contain NaN or inf")
    if fx <= 0 or fy <= 0:
        raise ValueError(f"{name}: focal lengths must be positive, got fx={fx}, fy={fy}")
    if abs(k22 - 1.0) > 1e-9 or k20 != 0 or k21 != 0 or k10 != 0:
        raise ValueError(f"{name}: not a pinhole intrinsics matrix (last row must be 0 0 1)")
    return K


def cell_centers(height: int, width: int, stride: int = 8) -> np.ndarray:
    """Pixel centres of a ``(height, width)`` grid of cells at ``stride``: array ``(height, width, 2)``.

    Cell ``(i, j)`` sees pixel ``(x, y) = (stride * j + stride / 2, stride * i + stride / 2)``.
    """
    ys = np.arange(height, dtype=np.float64) * stride + stride / 2.0
    xs = np.arange(width, dtype=np.float64) * stride + stride / 2.0
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx, gy], axis=-1)


# --------------------------------------------------------------------------- poses

def make_pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 homogeneous matrix from a rotation ``(3, 3)`` and a translation ``(3,)``."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t).reshape(3)
    return T


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform ``(..., 4, 4)`` (exact, without a general matrix inverse)."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def is_rigid(T: np.ndarray, tol: float = 1e-3) -> bool:
    """True when ``T`` is a finite 4x4 rigid transform (orthonormal rotation, det +1, last row 0 0 0 1)."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        return False
    R = T[:3, :3]
    if np.abs(R.T @ R - np.eye(3)).max() > tol or abs(np.linalg.det(R) - 1.0) > tol:
        return False
    return bool(np.abs(T[3] - np.array([0.0, 0.0, 0.0, 1.0])).max() <= tol)


def check_rigid(T: np.ndarray, name: str = "pose", tol: float = 1e-3) -> np.ndarray:
    """Return ``T`` as float64 (4, 4); raise ValueError naming ``name`` when it is not rigid."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"{name}: expected a 4x4 pose matrix, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise ValueError(f"{name}: pose contains NaN or inf")
    if not is_rigid(T, tol):
        R = T[:3, :3]
        raise ValueError(
            f"{name}: not a rigid transform (|R^T R - I| = {np.abs(R.T @ R - np.eye(3)).max():.2e}, "
            f"det R = {np.linalg.det(R):.4f}, last row {T[3].tolist()})")
    return T


# --------------------------------------------------------------------------- rotations

def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` from quaternions ``(..., 4)`` in ``(w, x, y, z)`` order.

    The quaternion is normalized first; a zero quaternion raises ValueError.
    """
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(n < 1e-12):
        raise ValueError("quaternion with zero norm")
    w, x, y, z = np.moveaxis(q / n, -1, 0)
    R = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], axis=-1)
    return R.reshape(q.shape[:-1] + (3, 3))


def rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """Quaternions ``(..., 4)`` ``(w, x, y, z)`` with ``w >= 0`` from rotations ``(..., 3, 3)``.

    Uses the largest-diagonal branch (Shepperd) so it is stable for every rotation.
    """
    R = np.asarray(R, dtype=np.float64)
    flat = R.reshape(-1, 3, 3)
    out = np.empty((flat.shape[0], 4))
    for k, m in enumerate(flat):
        tr = m[0, 0] + m[1, 1] + m[2, 2]
        if tr > 0:
            s = 2.0 * math.sqrt(tr + 1.0)
            q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
        elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
            s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
            q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
        elif m[1, 1] > m[2, 2]:
            s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
            q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
        else:
            s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
            q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
        q = np.asarray(q)
        q /= np.linalg.norm(q)
        out[k] = -q if q[0] < 0 else q
    return out.reshape(R.shape[:-2] + (4,))


def average_quaternions(quaternions: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Rotation average of quaternions ``(..., N, 4)`` (w, x, y, z) -> ``(..., 4)``, unit, ``w >= 0``.

    Markley et al. (2007): the eigenvector of the largest eigenvalue of ``sum_i w_i q_i q_i^T``
    (``q_i`` normalised first). Invariant to the sign of each ``q_i``, so ``q`` and ``-q`` samples of
    the same rotation cannot cancel out as they do in a plain mean. ``weights`` ``(..., N)``, >= 0.
    """
    q = np.asarray(quaternions, dtype=np.float64)
    if q.ndim < 2 or q.shape[-1] != 4:
        raise ValueError(f"average_quaternions: expected (..., N, 4), got {q.shape}")
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    w = np.ones(q.shape[:-1]) if weights is None else np.broadcast_to(np.asarray(weights, dtype=np.float64), q.shape[:-1])
    m = np.einsum("...n,...ni,...nj->...ij", w, q, q)
    _, vectors = np.linalg.eigh(m)  # eigenvalues ascending
    mean = vectors[..., :, -1]
    return np.where(mean[..., :1] < 0, -mean, mean)


def rvec_to_rotmat(rvec: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation matrix ``(3, 3)`` from an axis-angle vector ``(3,)`` (radians)."""
    rvec = np.asarray(rvec, dtype=np.float64).reshape(3)
    theta = np.linalg.norm(rvec)
    if theta < 1e-12:
        return np.eye(3)
    k = rvec / theta
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * Kx + (1 - math.cos(theta)) * Kx @ Kx


def rotmat_to_rvec(R: np.ndarray) -> np.ndarray:
    """Axis-angle vector ``(3,)`` from a rotation matrix (inverse of :func:`rvec_to_rotmat`)."""
    q = rotmat_to_quat(R)
    w, v = q[0], q[1:]
    s = np.linalg.norm(v)
    if s < 1e-12:
        return np.zeros(3)
    return v / s * (2.0 * math.atan2(s, w))


def euler_zyx_to_rotmat(yaw: float, pitch: float, roll: float, degrees: bool = True) -> np.ndarray:
    """Rotation ``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` (intrinsic z-y'-x'', aerospace order)."""
    if degrees:
        yaw, pitch, roll = (math.radians(a) for a in (yaw, pitch, roll))
    cz, sz, cy, sy, cx, sx = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch),
                              math.cos(roll), math.sin(roll))
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return Rz @ Ry @ Rx


def rotmat_to_euler_zyx(R: np.ndarray, degrees: bool = True) -> Tuple[float, float, float]:
    """Inverse of :func:`euler_zyx_to_rotmat`: ``(yaw, pitch, roll)``."""
    R = np.asarray(R, dtype=np.float64)
    pitch = math.asin(max(-1.0, min(1.0, -R[2, 0])))
    yaw = math.atan2(R[1, 0], R[0, 0])
    roll = math.atan2(R[2, 1], R[2, 2])
    if degrees:
        return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)
    return yaw, pitch, roll


# --------------------------------------------------------------------------- points and projection

def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 (or 3x4) transform to points ``(..., 3)``."""
    T = np.asarray(T, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    return points @ T[:3, :3].T + T[:3, 3]


def project(points_world: np.ndarray, T_c2w: np.ndarray, K: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Project world points ``(N, 3)`` into a camera with pose ``T_c2w``.

    Returns pixels ``(N, 2)`` and depths ``(N,)`` (z in the camera frame; <= 0 means behind).
    A skew ``K[0, 1]`` is applied.
    """
    cam = transform_points(invert_pose(T_c2w), points_world)
    z = cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam[..., :2] / z[..., None]) * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])
        if K[0, 1] != 0:  # only when skewed: a zero skew would add 0 * inf at z = 0
            uv[..., 0] += K[0, 1] * cam[..., 1] / z
    return uv, z


def backproject_depth(depth: np.ndarray, K: np.ndarray, T_c2w: np.ndarray | None = None,
                      pixels: np.ndarray | None = None) -> np.ndarray:
    """Lift a depth map to 3D points.

    Args:
        depth: ``(H, W)`` metres; <= 0 or non-finite means invalid (the point is NaN).
        K: 3x3 intrinsics of the depth map.
        T_c2w: optional pose; when given, points are returned in world coordinates.
        pixels: optional ``(H, W, 2)`` pixel positions of each depth sample (default: integer grid,
            i.e. the sample ``(i, j)`` is at ``(x, y) = (j, i)``).

    Returns:
        ``(H, W, 3)`` points (camera frame, or world frame when ``T_c2w`` is given). A skew
        ``K[0, 1]`` is undone (the inverse of :func:`project`).
    """
    depth = np.asarray(depth, dtype=np.float64)
    H, W = depth.shape
    if pixels is None:
        gx, gy = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    else:
        gx, gy = pixels[..., 0], pixels[..., 1]
    valid = np.isfinite(depth) & (depth > 0)
    z = np.where(valid, depth, np.nan)
    y_n = (gy - K[1, 2]) / K[1, 1]
    x = (gx - K[0, 2] - K[0, 1] * y_n) / K[0, 0] * z
    y = y_n * z
    pts = np.stack([x, y, z], axis=-1)
    if T_c2w is not None:
        pts = transform_points(T_c2w, pts)
    return pts


# --------------------------------------------------------------------------- errors

def rotation_error_deg(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Geodesic angle between rotations ``(..., 3, 3)`` in degrees (acos argument clamped)."""
    R_a = np.asarray(R_a, dtype=np.float64)
    R_b = np.asarray(R_b, dtype=np.float64)
    trace = np.einsum("...ij,...ij->...", R_a, R_b)  # trace(R_a^T R_b)
    return np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))


def translation_error(T_a_c2w: np.ndarray, T_b_c2w: np.ndarray) -> np.ndarray:
    """Distance between the camera centres of two camera-to-world poses ``(..., 4, 4)``."""
    return np.linalg.norm(np.asarray(T_a_c2w)[..., :3, 3] - np.asarray(T_b_c2w)[..., :3, 3], axis=-1)


def pose_errors(T_est_c2w: np.ndarray, T_gt_c2w: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(rotation error in degrees, translation error in metres)`` of camera-to-world poses."""
    return (rotation_error_deg(np.asarray(T_est_c2w)[..., :3, :3], np.asarray(T_gt_c2w)[..., :3, :3]),
            translation_error(T_est_c2w, T_gt_c2w))


# --------------------------------------------------------------------------- torch variants

def quat_to_rotmat_torch(q: "torch.Tensor") -> "torch.Tensor":
    """Differentiable rotation matrices ``(..., 3, 3)`` from quaternions ``(..., 4)`` (w, x, y, z)."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], dim=-1)
    return R.reshape(q.shape[:-1] + (3, 3))


def rotmat_to_quat_torch(R: "torch.Tensor") -> "torch.Tensor":
    """Quaternions ``(..., 4)`` (w, x, y, z, ``w >= 0``) from rotation matrices ``(..., 3, 3)``."""
    m = R
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack([
        torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0],
                     1 + m[..., 1, 1] - m[..., 0, 0] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 + m[..., 2, 2] - m[..., 0, 0] - m[..., 1, 1]], -1),
    ], dim=-2)  # (..., 4, 4): each row is 4*s*q for one branch
    diag = torch.stack([tr, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    best = diag.argmax(-1, keepdim=True)
    q = torch.gather(cands, -2, best[..., None].expand(best.shape[:-1] + (1, 4))).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def rotation_error_deg_torch(R_a: "torch.Tensor", R_b: "torch.Tensor") -> "torch.Tensor":
    """Geodesic angle in degrees between rotations ``(..., 3, 3)``; clamped acos, differentiable."""
    trace = (R_a * R_b).sum(dim=(-1, -2))
    return torch.rad2deg(torch.acos(((trace - 1) / 2).clamp(-1 + 1e-7, 1 - 1e-7)))


def quat_angle_deg_torch(q_a: "torch.Tensor", q_b: "torch.Tensor") -> "torch.Tensor":
    """Angle in degrees between the rotations of quaternions ``(..., 4)`` (sign-invariant)."""
    q_a = q_a / q_a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    q_b = q_b / q_b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    d = (q_a * q_b).sum(-1).abs().clamp(max=1.0)
    return torch.rad2deg(2 * torch.acos(d))


def average_quaternions_torch(quaternions: "torch.Tensor", weights: "torch.Tensor | None" = None) -> "torch.Tensor":
    """Torch twin of :func:`average_quaternions`: ``(..., N, 4)`` (+ weights ``(..., N)``) -> ``(..., 4)``.

    Computed in float64 and returned in the input dtype (not differentiable through the sign choice).
    """
    if quaternions.dim() < 2 or quaternions.shape[-1] != 4:
        raise ValueError(f"average_quaternions: expected (..., N, 4), got {tuple(quaternions.shape)}")
    q = quaternions.double()
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w = torch.ones(q.shape[:-1], dtype=q.dtype, device=q.device) if weights is None else weights.to(q.dtype)
    m = torch.einsum("...n,...ni,...nj->...ij", w.expand(q.shape[:-1]), q, q)
    _, vectors = torch.linalg.eigh(m)  # eigenvalues ascending
    mean = vectors[..., :, -1]
    mean = torch.where(mean[..., :1] < 0, -mean, mean)
    return mean.to(quaternions.dtype)


def transform_points_torch(T: "torch.Tensor", points: "torch.Tensor") -> "torch.Tensor":
    """Apply transforms ``(..., 4, 4)`` to points ``(..., N, 3)``."""
    return points @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


def cell_centers_torch(height: int, width: int, stride: int = 8, device=None,
                       dtype=None) -> "torch.Tensor":
    """Torch twin of :func:`cell_centers`: pixel centres ``(height, width, 2)`` as ``(x, y)``."""
    dtype = dtype or torch.float32
    ys = torch.arange(height, device=device, dtype=dtype) * stride + stride / 2
    xs = torch.arange(width, device=device, dtype=dtype) * stride + stride / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1)


def project_torch(points_cam: "torch.Tensor", K: "torch.Tensor", min_depth: float = 1e-6) -> "torch.Tensor":
    """Pinhole projection of camera-frame points ``(..., N, 3)`` with ``K (..., 3, 3)`` -> ``(..., N, 2)``.

    Depth is clamped to ``min_depth`` so points behind the camera give finite (wrong) pixels;
    callers mask them by depth. A skew ``K[..., 0, 1]`` is applied (as :func:`project`).
    """
    z = points_cam[..., 2:3].clamp_min(min_depth)
    xy = points_cam[..., :2] / z
    K = K.to(xy.dtype)
    # K's top two rows applied to (x, y, 1): [fx s cx; 0 fy cy]
    return xy @ K[..., :2, :2].transpose(-1, -2) + K[..., None, :2, 2]
