"""Geometric and photometric augmentation that keeps images, intrinsics, poses and targets consistent.

A geometric augmentation is a *new virtual camera*: the same camera centre, rotated about its
optical axis by ``angle`` and zoomed by ``scale``. Its intrinsics and pose follow exactly, so a
world point seen by the original camera at pixel ``p_in`` is seen by the new one at ``p_out``::

    K_out   = [[scale * fx, 0, cx_out], [0, scale * fy, cy_out], [0, 0, 1]]
    R_z     = rotation about the camera z axis by ``angle`` (new camera from old camera)
    T_out   = T_in @ [[R_z^T, 0], [0, 1]]                 (camera-to-world)
    p_in    = M @ p_out,   M = K_in @ R_z^T @ inv(K_out)   (affine: R_z keeps z)

Because ``M`` maps every output pixel to the input pixel on the same ray, the image is resampled
through ``M`` (bilinear), and per-cell targets are looked up through ``M`` too (nearest sample,
or back-projected from depth on the exact ray of the output cell centre). This works for any
``fx != fy`` and any principal point; rotation is about the principal point.

Pixel coordinates are continuous with pixel ``k`` covering ``[k, k + 1)`` (so a single focal
length puts the principal point at ``(W / 2, H / 2)`` and cell ``(i, j)`` at ``(8j + 4, 8i + 4)``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .. import geometry

__all__ = [
    "AugmentParams", "ViewTransform", "sample_augmentation", "view_transform", "rotation_z",
    "map_points", "warp_image", "sample_nearest", "adjust_brightness_contrast", "nearby_view", "synthesize_view",
]


@dataclass(frozen=True)
class AugmentParams:
    """Ranges of the random augmentation (defaults follow DSAC*: scale 2/3..3/2, +-30 deg, 0.1 jitter)."""

    scale_min: float = 2.0 / 3.0
    scale_max: float = 3.0 / 2.0
    rotation_deg: float = 30.0
    brightness: float = 0.1
    contrast: float = 0.1
    relight: float = 0.0  # strength of random directional shading from the frame's normals (0: off)
    shadow: float = 0.0   # probability of a random soft-edged shadow polygon (0: off)
    camera: float = 0.0   # strength of random lens blur, vignetting, gamma and sensor noise (0: off)
    # novel views from depth: with probability view_prob the frame is re-rendered from a camera
    # moved by up to view_shift times its median depth (0: off); see synthesize_view
    view_shift: float = 0.0
    view_prob: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.scale_min <= self.scale_max):
            raise ValueError(f"augmentation scale range must satisfy 0 < min <= max, got "
                             f"[{self.scale_min}, {self.scale_max}]")
        if self.rotation_deg < 0 or self.brightness < 0 or self.contrast < 0:
            raise ValueError("augmentation rotation, brightness and contrast must be >= 0")
        if self.brightness >= 1 or self.contrast >= 1:
            raise ValueError("augmentation brightness and contrast must be < 1 (factors 1 +- value)")
        if not 0 <= self.relight < 1:
            raise ValueError(f"augmentation relight must be in [0, 1), got {self.relight}")
        if not 0 <= self.shadow <= 1:
            raise ValueError(f"augmentation shadow must be a probability in [0, 1], got {self.shadow}")
        if not 0 <= self.camera <= 1:
            raise ValueError(f"augmentation camera must be in [0, 1], got {self.camera}")
        if not 0 <= self.view_shift < 1:
            raise ValueError(f"augmentation view_shift must be in [0, 1) (a fraction of the depth), got {self.view_shift}")
        if not 0 <= self.view_prob <= 1:
            raise ValueError(f"augmentation view_prob must be a probability in [0, 1], got {self.view_prob}")


def sample_augmentation(params: AugmentParams, generator: Optional[torch.Generator] = None) -> dict:
    """Draw one augmentation: ``{'scale', 'angle_deg', 'brightness', 'contrast'}``, plus
    ``'view'`` (the new camera centre ``(3,)`` in the camera's axes, in units of its median depth,
    or None to keep the frame) when ``params.view_shift > 0``, ``'relight'`` (strength) and
    ``'light'`` (unit direction ``(3,)``) when ``params.relight > 0``, ``'shadow'`` (``(vertices
    (n, 2)`` in image fractions, darkness, softness) or None) when ``params.shadow > 0``, and
    ``'camera'`` (the arguments of :func:`camera_effects`) when ``params.camera > 0``.

    Uses torch's RNG so that DataLoader workers (seeded per worker by torch) draw different values.
    Scale is drawn log-uniformly so zooming in and out are equally likely. With relighting, shadows,
    camera effects and novel views off, the draws are those of earlier versions (same seed, same
    augmentation).
    """
    u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
    log_lo, log_hi = math.log(params.scale_min), math.log(params.scale_max)
    out = {
        "scale": math.exp(log_lo + (log_hi - log_lo) * u[0]),
        "angle_deg": (2.0 * u[1] - 1.0) * params.rotation_deg,
        "brightness": 1.0 + (2.0 * u[2] - 1.0) * params.brightness,
        "contrast": 1.0 + (2.0 * u[3] - 1.0) * params.contrast,
    }
    if params.view_shift > 0:
        w = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        direction = torch.randn(3, generator=generator, dtype=torch.float64)
        direction = (direction / direction.norm().clamp_min(1e-12)).numpy()
        # uniform in the ball of radius view_shift
        out["view"] = direction * params.view_shift * w[1] ** (1.0 / 3.0) if w[0] < params.view_prob else None
    if params.relight > 0:
        light = torch.randn(3, generator=generator, dtype=torch.float64)
        out["light"] = (light / light.norm().clamp_min(1e-12)).numpy()
        out["relight"] = float(torch.rand((), generator=generator, dtype=torch.float64)) * params.relight
    if params.shadow > 0:
        v = torch.rand(10, generator=generator, dtype=torch.float64).tolist()
        out["shadow"] = None
        if v[0] < params.shadow:
            # a convex polygon of 3-5 vertices on a circle around a random point of the image
            n = 3 + int(v[1] * 3)
            angles = np.sort(np.asarray(v[2:2 + n]) * 2 * math.pi)
            radius = 0.25 + 0.5 * v[7]
            centre = np.array([v[8], v[9]])
            vertices = centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
            w = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
            out["shadow"] = (vertices, 0.3 + 0.5 * w[0], 0.005 + 0.03 * w[1])
    if params.camera > 0:
        c = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        out["camera"] = {"blur_px": 0.8 * params.camera * c[0], "vignette": 0.35 * params.camera * c[1],
                         "gamma": math.exp(0.3 * params.camera * (2 * c[2] - 1)),
                         "noise": 0.02 * params.camera * c[3],
                         "seed": int(torch.randint(0, 2 ** 31 - 1, (), generator=generator))}
    return out


def apply_shadow(image: np.ndarray, vertices: np.ndarray, darkness: float, softness: float) -> np.ndarray:
    """Darken ``image (C, H, W)`` inside a convex polygon: ``vertices (n, 2)`` as (x, y) fractions of the
    image width and height, in counter-clockwise order of angle; the factor is ``1 - darkness`` inside,
    ramping over ``softness`` (a fraction of the image width) across the border.

    A cast shadow of something outside the view, or of a surface the renderer never shadowed:
    renders with one fixed lighting have none where photos have many.
    """
    C, H, W = image.shape
    x = (np.arange(W, dtype=np.float32) + 0.5) / W
    y = (np.arange(H, dtype=np.float32) + 0.5) / H
    px, py = np.meshgrid(x * W, y * H)
    v = np.asarray(vertices, dtype=np.float64) * np.array([W, H])
    inside = np.full((H, W), np.inf, np.float32)
    for k in range(len(v)):
        (x0, y0), (x1, y1) = v[k], v[(k + 1) % len(v)]
        length = math.hypot(x1 - x0, y1 - y0)
        if length == 0:
            continue
        # signed distance to the edge's line, positive on the polygon's side (counter-clockwise order)
        d = ((x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)) / length
        inside = np.minimum(inside, d.astype(np.float32))
    ramp = np.clip(inside / max(softness * W, 1e-6) + 0.5, 0.0, 1.0)
    return (image * (1.0 - darkness * ramp)[None]).astype(np.float32, copy=False)


def camera_effects(image: np.ndarray, blur_px: float = 0.0, vignette: float = 0.0, gamma: float = 1.0,
                   noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """What a camera adds to a clean render of ``image (C, H, W)`` in ``[0, 1]``: Gaussian lens blur
    (``blur_px`` sigma), vignetting (brightness ``1 - vignette * r^2 / 2`` at normalised radius r),
    a tone curve ``x ** gamma`` and Gaussian sensor noise of standard deviation ``noise``."""
    out = np.asarray(image, dtype=np.float32)
    if blur_px > 0.05:
        from scipy.ndimage import gaussian_filter

        out = gaussian_filter(out, sigma=(0, blur_px, blur_px), mode="nearest")
    C, H, W = out.shape
    if vignette > 0:
        yy = (np.arange(H, dtype=np.float32) - (H - 1) / 2) / (H / 2)
        xx = (np.arange(W, dtype=np.float32) - (W - 1) / 2) / (W / 2)
        out = out * (1.0 - vignette * (yy[:, None] ** 2 + xx[None, :] ** 2) / 2)[None]
    out = np.clip(out, 0.0, 1.0)
    if gamma != 1.0:
        out = out ** np.float32(gamma)
    if noise > 0:
        out = out + np.random.default_rng(seed).standard_normal(out.shape, dtype=np.float32) * np.float32(noise)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def relight_image(image: np.ndarray, normals: np.ndarray, light: np.ndarray, strength: float,
                  stride: int = 8) -> np.ndarray:
    """Shade ``image (C, H, W)`` in ``[0, 1]`` by a directional light from per-cell ``normals (3, h, w)``.

    Each cell with a normal is multiplied by ``1 - s + 2 s max(0, n . l)``: faces turned towards
    ``light`` (a unit vector in the normals' frame) brighten, faces turned away darken, by up to
    ``s = strength``. Cells without a normal (all zeros) keep their grey levels. The gain is
    interpolated bilinearly between cell centres (cell ``(i, j)`` is centred on pixel ``(stride * j +
    stride / 2, stride * i + stride / 2)`` as in :func:`transpose.geometry.cell_centers`),
    so that it changes smoothly inside a surface and across its edges. Why: renders come with one
    fixed lighting, while photos of the same place are lit from anywhere; shading that follows the
    scene's geometry is what global brightness jitter cannot teach.
    """
    C, H, W = image.shape
    n = np.asarray(normals, dtype=np.float32)
    has = np.abs(n).sum(axis=0) > 0
    lambert = np.clip(np.tensordot(np.asarray(light, dtype=np.float32), n, axes=1), 0.0, None)
    gain = np.where(has, 1.0 - strength + 2.0 * strength * lambert, 1.0).astype(np.float32)

    def taps(size: int, cells: int):
        x = np.clip((np.arange(size, dtype=np.float32) - stride / 2) / stride, 0, cells - 1)
        i0 = np.floor(x).astype(np.int64)
        i1 = np.minimum(i0 + 1, cells - 1)
        return i0, i1, (x - i0).astype(np.float32)

    r0, r1, fr = taps(H, gain.shape[0])
    c0, c1, fc = taps(W, gain.shape[1])
    rows = gain[r0] * (1 - fr)[:, None] + gain[r1] * fr[:, None]           # (H, w)
    full = rows[:, c0] * (1 - fc)[None, :] + rows[:, c1] * fc[None, :]     # (H, W)
    return np.clip(image * full[None], 0.0, 1.0).astype(np.float32, copy=False)


def rotation_z(angle_deg: float) -> np.ndarray:
    """Rotation ``(3, 3)`` about the camera z (optical) axis by ``angle_deg``."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class ViewTransform:
    """A virtual camera derived from an input camera (see the module docstring).

    Attributes:
        K: ``(3, 3)`` intrinsics of the output image.
        R_new_from_old: ``(3, 3)`` rotation taking old camera coordinates to new ones.
        M: ``(3, 3)`` affine map of output pixels to input pixels (homogeneous, last row 0 0 1).
        size: ``(H_out, W_out)`` of the output image.
    """

    K: np.ndarray
    R_new_from_old: np.ndarray
    M: np.ndarray
    size: Tuple[int, int]

    def pose(self, T_c2w: np.ndarray) -> np.ndarray:
        """The output camera's camera-to-world pose ``(4, 4)`` from the input's."""
        return np.asarray(T_c2w, dtype=np.float64) @ geometry.make_pose(self.R_new_from_old.T, np.zeros(3))

    @property
    def is_identity(self) -> bool:
        return bool(np.allclose(self.M, np.eye(3), atol=1e-9))


def view_transform(K_in: np.ndarray, size_in: Tuple[int, int], scale: float = 1.0, angle_deg: float = 0.0,
                   size_out: Optional[Tuple[int, int]] = None) -> ViewTransform:
    """The virtual camera zoomed by ``scale`` and rotated by ``angle_deg`` about the optical axis.

    Args:
        K_in: ``(3, 3)`` input intrinsics.
        size_in: ``(H, W)`` of the input image.
        scale: zoom factor (focal lengths are multiplied by it).
        angle_deg: in-plane rotation.
        size_out: ``(H_out, W_out)`` output canvas; default the scaled input size
            ``(round(H * scale), round(W * scale))``. The scaled principal point is shifted by half
            the difference, i.e. the canvas is centred on the scaled image (a centre crop or pad).
    """
    K_in = geometry.check_intrinsics(K_in)
    H, W = size_in
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if size_out is None:
        size_out = (max(1, int(round(H * scale))), max(1, int(round(W * scale))))
    H_out, W_out = int(size_out[0]), int(size_out[1])
    K_out = K_in.copy()
    K_out[0, 0] *= scale
    K_out[1, 1] *= scale
    K_out[0, 1] *= scale
    K_out[0, 2] = K_in[0, 2] * scale + (W_out - W * scale) / 2.0
    K_out[1, 2] = K_in[1, 2] * scale + (H_out - H * scale) / 2.0
    R = rotation_z(angle_deg)
    M = K_in @ R.T @ np.linalg.inv(K_out)
    M[2] = (0.0, 0.0, 1.0)  # exact: R_z leaves z alone, remove round-off
    return ViewTransform(K=K_out, R_new_from_old=R, M=M, size=(H_out, W_out))


def map_points(M: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply an affine pixel map ``M (3, 3)`` to points ``(..., 2)``."""
    points = np.asarray(points, dtype=np.float64)
    x, y = points[..., 0], points[..., 1]
    # explicit affine (not a matmul): BLAS threads contend badly inside busy DataLoader workers
    return np.stack([M[0, 0] * x + M[0, 1] * y + M[0, 2], M[1, 0] * x + M[1, 1] * y + M[1, 2]], axis=-1)


def warp_image(image: torch.Tensor, M: np.ndarray, size_out: Tuple[int, int], mode: str = "bilinear",
               fill: float = 0.0, padding: str = "fill") -> torch.Tensor:
    """Resample ``image (C, H, W)`` so that output pixel ``p`` takes the input value at ``M @ p``.

    Bilinear (or ``'nearest'``) sampling at pixel centres; outside the input the value is ``fill``,
    or with ``padding='border'`` that of the nearest edge pixel (a zoom into the image then has no
    dark rim where its outermost pixels fall within half a pixel of the edge).
    """
    if padding not in ("fill", "border"):
        raise ValueError(f"padding must be 'fill' or 'border', got '{padding}'")
    C, H, W = image.shape
    H_out, W_out = size_out
    # affine_grid works in normalised coordinates (align_corners=False: -1 and 1 are the outer
    # edges, i.e. continuous pixel 0 and W): theta = N_in @ M @ inv(N_out)
    def normalise(w: int, h: int) -> np.ndarray:
        return np.array([[2.0 / w, 0.0, -1.0], [0.0, 2.0 / h, -1.0], [0.0, 0.0, 1.0]])

    theta = normalise(W, H) @ np.asarray(M, dtype=np.float64) @ np.linalg.inv(normalise(W_out, H_out))
    # the grid is built in numpy (affine_grid's batched matmul is slow on busy cores)
    xs = ((np.arange(W_out, dtype=np.float64) + 0.5) * (2.0 / W_out) - 1.0)[None, :]
    ys = ((np.arange(H_out, dtype=np.float64) + 0.5) * (2.0 / H_out) - 1.0)[:, None]
    grid = np.empty((1, H_out, W_out, 2), dtype=np.float32)
    grid[0, :, :, 0] = theta[0, 0] * xs + theta[0, 1] * ys + theta[0, 2]
    grid[0, :, :, 1] = theta[1, 0] * xs + theta[1, 1] * ys + theta[1, 2]
    grid = torch.from_numpy(grid)
    src = image.to(torch.float32)[None]
    if fill != 0.0:
        src = src - fill
    out = F.grid_sample(src, grid, mode=mode, padding_mode="zeros" if padding == "fill" else "border",
                        align_corners=False)[0]
    if fill != 0.0:
        out = out + fill
    return out.to(image.dtype) if image.is_floating_point() else out


def sample_nearest(values: np.ndarray, points: np.ndarray, stride: float,
                   valid: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Look up a map sampled every ``stride`` pixels at continuous image points (nearest sample).

    Args:
        values: ``(C, h, w)`` map sampled every ``stride`` pixels. A full-resolution map
            (``stride`` 1, e.g. depth) follows OpenCV: sample ``(i, j)`` is centred on pixel
            ``(x, y) = (j, i)``. A coarser map (e.g. DSAC*'s ``init/`` at stride 8) holds cell
            ``(i, j)`` centred on ``(stride * j + stride / 2, stride * i + stride / 2)``.
        points: ``(..., 2)`` pixel positions ``(x, y)`` in the image.
        stride: pixels per sample.
        valid: optional ``(h, w)`` bool validity of the samples.

    Returns:
        ``(C, ...)`` values (zeros where invalid) and ``(...)`` bool validity (inside the map and
        ``valid``).
    """
    values = np.asarray(values)
    C, h, w = values.shape
    points = np.asarray(points, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        # nearest sample centre; rounding (not flooring) so that a point computed as 27.9999999
        # for pixel 28 still finds pixel 28
        offset = 0.0 if stride == 1 else stride / 2.0
        col = np.floor((points[..., 0] - offset) / stride + 0.5)
        row = np.floor((points[..., 1] - offset) / stride + 0.5)
    inside = np.isfinite(col) & np.isfinite(row) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    ci = np.where(inside, col, 0).astype(np.int64)
    ri = np.where(inside, row, 0).astype(np.int64)
    out = values[:, ri, ci]
    ok = inside if valid is None else inside & np.asarray(valid)[ri, ci]
    out = np.where(ok[None], out, 0).astype(values.dtype)
    return out, ok


def adjust_brightness_contrast(image: Union[torch.Tensor, np.ndarray], brightness: float = 1.0,
                               contrast: float = 1.0) -> Union[torch.Tensor, np.ndarray]:
    """Photometric jitter of ``image (C, H, W)`` in ``[0, 1]``, as torchvision's ColorJitter does it.

    Brightness multiplies; contrast blends with the mean grey level of the (brightened) image.
    The result is clamped to ``[0, 1]``. Works on torch tensors and numpy arrays alike.
    """
    is_torch = isinstance(image, torch.Tensor)
    out = image.numpy() if is_torch else np.asarray(image)
    if brightness != 1.0:
        out = np.clip(out * np.float32(brightness), 0.0, 1.0)
    if contrast != 1.0:
        if out.shape[0] == 3:
            grey = float((0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2]).mean())
        else:
            grey = float(out.mean())
        out = np.clip(np.float32(contrast) * out + np.float32((1.0 - contrast) * grey), 0.0, 1.0)
    out = out.astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(out)) if is_torch else out


# --------------------------------------------------------------------------- novel views from depth


def nearby_view(T_c2w: np.ndarray, shift: np.ndarray, reach: float) -> np.ndarray:
    """A camera-to-world pose ``(4, 4)`` near ``T_c2w`` that still looks at what it looked at.

    The centre moves by ``shift (3,)`` (camera axes, metres); the camera then turns, by the
    smallest rotation, so that the point ``reach`` metres along its old principal ray stays on
    its principal ray. Why: a sideways step with the orientation kept pushes part of the view out
    of frame and leaves a hole as wide on the other side; a new viewpoint on the same surfaces is
    what the test views of a scene are.
    """
    T = np.asarray(T_c2w, dtype=np.float64)
    centre = np.asarray(shift, dtype=np.float64).reshape(3)
    axis_new = np.array([0.0, 0.0, float(reach)]) - centre
    axis_new /= max(np.linalg.norm(axis_new), 1e-12)
    cross = np.cross([0.0, 0.0, 1.0], axis_new)
    s, c = np.linalg.norm(cross), float(axis_new[2])
    R_old_from_new = np.eye(3) if s < 1e-12 else geometry.rvec_to_rotmat(cross / s * math.atan2(s, c))
    return T @ geometry.make_pose(R_old_from_new, centre)


def _push_pull_fill(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill the unknown pixels of ``values (C, H, W)`` from the known ones (``known (H, W)`` bool)
    by a push-pull pyramid: coarser and coarser averages of the known pixels, pulled back up into
    the holes. Known pixels are kept; a hole gets a smooth blend of what surrounds it."""
    w = known.astype(np.float32)
    if w.all() or not w.any():
        return values
    C, H, W = values.shape
    sums = values.astype(np.float32) * w[None]
    levels = []
    while not (w > 0).all():  # ends by 1 x 1 at the latest, which holds every known pixel
        levels.append((sums, w))
        h, wd = sums.shape[1:]
        if h % 2 or wd % 2:
            sums = np.pad(sums, ((0, 0), (0, h % 2), (0, wd % 2)))
            w = np.pad(w, ((0, h % 2), (0, wd % 2)))
        # 2 x 2 sums as four strided views (cheaper than a reshape-sum over two axes)
        sums = sums[:, 0::2, 0::2] + sums[:, 1::2, 0::2] + sums[:, 0::2, 1::2] + sums[:, 1::2, 1::2]
        w = w[0::2, 0::2] + w[1::2, 0::2] + w[0::2, 1::2] + w[1::2, 1::2]
    mean = sums / np.maximum(w, 1e-12)[None]
    for s, ww in reversed(levels):
        up = np.repeat(np.repeat(mean, 2, axis=1), 2, axis=2)[:, :s.shape[1], :s.shape[2]]
        mean = np.where(ww[None] > 0, s / np.maximum(ww, 1e-12)[None], up)
    return mean


def synthesize_view(image: np.ndarray, depth: np.ndarray, K: np.ndarray, T_src: np.ndarray,
                    T_dst: np.ndarray, min_depth: float = 0.05) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-render an image with depth from a nearby camera (same intrinsics) by forward splatting.

    Args:
        image: ``(H, W, C)`` uint8 image seen from ``T_src`` (camera-to-world).
        depth: ``(H, W)`` metres, pixel-aligned with ``image`` (<= 0 or non-finite: unknown).
        K: ``(3, 3)`` intrinsics of both cameras; pixel ``(i, j)`` is centred on ``(x, y) = (j, i)``.
        T_src, T_dst: ``(4, 4)`` camera-to-world poses of the source and the new camera.
        min_depth: points closer than this to the new camera are dropped.

    Returns:
        ``image (H, W, C)`` uint8 and ``depth (H, W)`` float32 of the new view, and ``source (H, W,
        2)`` float32: where in the old image each new pixel came from (``(x, y)``, NaN where
        nothing was seen), to carry per-view maps such as normals across. Every known pixel
        is moved to where the new camera sees it; where several land on one pixel the nearest
        wins (a z-buffer). One-pixel cracks (a surface seen larger than before, or background
        showing through one) take the mean of their nearer neighbours. Pixels nothing was seen
        at (disocclusions, the border) get depth 0, so they carry no coordinate target, and a
        push-pull blend of their surroundings in the image, so that holes are no cue.
    """
    H, W = depth.shape
    C = image.shape[2]
    K = geometry.check_intrinsics(K)
    T_rel = geometry.invert_pose(np.asarray(T_dst, dtype=np.float64)) @ np.asarray(T_src, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    flat = np.flatnonzero(valid)
    rows, cols = np.divmod(flat, W)
    # float32 is ample for pixel positions and depths, and halves the memory traffic
    f32 = np.float32
    z = depth.reshape(-1)[flat].astype(f32)
    y_n = (rows.astype(f32) - f32(K[1, 2])) / f32(K[1, 1])
    x = (cols.astype(f32) - f32(K[0, 2]) - f32(K[0, 1]) * y_n) * (z / f32(K[0, 0]))  # K^-1, skew too
    y = y_n * z
    R, t = T_rel[:3, :3].astype(f32), T_rel[:3, 3].astype(f32)
    X = R[0, 0] * x + R[0, 1] * y + R[0, 2] * z + t[0]
    Y = R[1, 0] * x + R[1, 1] * y + R[1, 2] * z + t[1]
    Z = R[2, 0] * x + R[2, 1] * y + R[2, 2] * z + t[2]
    front = Z > min_depth
    inv_z = np.where(front, 1.0 / np.where(front, Z, 1), 0).astype(f32)
    u = np.floor((f32(K[0, 0]) * X + f32(K[0, 1]) * Y) * inv_z + f32(K[0, 2] + 0.5))
    v = np.floor(f32(K[1, 1]) * Y * inv_z + f32(K[1, 2] + 0.5))
    keep = np.flatnonzero(front & (u >= 0) & (u < W) & (v >= 0) & (v < H))
    target = v[keep].astype(np.int64) * W + u[keep].astype(np.int64)
    Zk = Z[keep]
    # z-buffer: per pixel the smallest key (depth in 0.1 mm steps, then the point's index); the
    # point's index in the low bits says which point won
    bits = max(1, int(len(Zk)).bit_length())
    key = (np.round(Zk * f32(1e4)).astype(np.int64) << bits) | np.arange(len(Zk), dtype=np.int64)
    best = np.full(H * W, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, target, key)
    hit = np.flatnonzero(best != np.iinfo(np.int64).max)
    winner = best[hit] & ((1 << bits) - 1)
    out_depth = np.zeros(H * W, dtype=f32)
    out_depth[hit] = Zk[winner]
    # the payload: the grey levels, then the source pixel (x, y), carried and crack-filled together
    payload = np.zeros((C + 2, H * W), dtype=f32)
    won = keep[winner]
    payload[:C, hit] = image.reshape(H * W, C)[flat[won]].T
    payload[C, hit] = cols[won]
    payload[C + 1, hit] = rows[won]
    out_depth = out_depth.reshape(H, W)
    payload = payload.reshape(C + 2, H, W)

    # cracks: a pixel with no point, or one behind at least 5 of its 8 neighbours, is a gap in the
    # nearer surface; it takes the mean of those nearer neighbours (two passes close 2-px gaps).
    # Found on depth alone, then filled pixel by pixel: cracks are a few per cent of the image
    offsets = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj]
    for _ in range(2):
        pad_far = np.pad(np.where(out_depth > 0, out_depth, np.inf), 1, constant_values=np.inf)
        limit = f32(0.97) * pad_far[1:-1, 1:-1]
        nearer = [pad_far[1 + di:1 + di + H, 1 + dj:1 + dj + W] < limit for di, dj in offsets]
        count = np.zeros((H, W), dtype=np.uint8)
        for near in nearer:
            count += near
        r, c = np.nonzero(count >= 5)
        if not len(r):
            break
        sum_d = np.zeros(len(r), dtype=f32)
        sum_p = np.zeros((C + 2, len(r)), dtype=f32)
        flat_depth, flat_payload = out_depth.reshape(-1), payload.reshape(C + 2, -1)
        for (di, dj), near in zip(offsets, nearer):
            m = near[r, c]  # False beyond the border (padded with inf), so clipping is safe
            at = np.clip(r + di, 0, H - 1) * W + np.clip(c + dj, 0, W - 1)
            sum_d += m * flat_depth[at]
            sum_p += m * np.take(flat_payload, at, axis=1)
        n = count[r, c].astype(f32)
        out_depth[r, c] = sum_d / n
        payload[:, r, c] = sum_p / n
    seen = out_depth > 0
    filled = _push_pull_fill(payload[:C], seen)
    out = np.clip(np.moveaxis(filled, 0, -1) + 0.5, 0, 255).astype(np.uint8)
    source = np.where(seen[None], payload[C:], np.nan).transpose(1, 2, 0)
    return out, out_depth, source
