"""Python face of the native RANSAC/PnP core (``transpose._core``).

Pose estimation from 2D-3D correspondences in the DSAC* style:

- hypotheses from 4 sampled cells: 3 solve (Lambda Twist P3P, or Kabsch for RGB-D), the 4th must
  agree (reprojection error below ``threshold``);
- soft inlier score ``sum_i w_i (1 - sigmoid(beta (err_i - tau)))`` with ``beta = 5 / tau``,
  errors clamped to ``max_reprojection_error``; logits ``alpha * score / sum(w)``;
- test mode picks the argmax and refines it; hypotheses are ranked in float32 (8 SIMD lanes on
  AVX2), first on a random subset of the cells, and only the best few are scored on every cell
  (``preemptive_cells``, ``preemptive_keep``), and the refinement sums its normal equations in
  float32 (the pose within ~1e-7 of the float64 fit); ``exact_scoring=True`` scores every
  hypothesis on every cell in float64 and refines in float64 instead. Reported scores and inliers
  are float64 either way;
- training mode scores every hypothesis (float64), draws the winner from ``softmax(logits)`` and
  returns all hypotheses (for the expected-pose loss of end-to-end training);
- adaptive mode keeps drawing 4-cell samples until an all-inlier sample was drawn with probability
  ``confidence`` (capped by ``max_iterations``), for low inlier ratios;
- refinement re-collects inliers (error < ``threshold``) and re-fits (Levenberg-Marquardt on the
  reprojection error, or weighted Kabsch for RGB-D) until their count stops growing.
- end-to-end training: :func:`dsac_loss` (torch autograd) / :func:`dsac_loss_numpy` give DSAC*'s
  expected pose loss over the hypotheses and its analytic gradient with respect to every scene
  coordinate (see ``csrc/core/derivatives.h``).

Poses follow :mod:`transpose.geometry`: ``R, t`` map world to camera (``x_cam = R X + t``) and
``pose`` is the camera-to-world 4x4. A seed gives the same pose on every call and for any thread
count. Inputs are numpy arrays or torch tensors (copied to CPU float64); the GIL is released while
the core runs. Bad input raises ``ValueError`` naming the argument.

Coordinate maps that are CUDA tensors take the GPU route of :mod:`transpose.ransac_gpu` in
:func:`estimate_pose` / :func:`estimate_pose_batch` (fixed-count test mode, extension built with
``setup_scripts/build_cuda.sh``): the map stays on the GPU, where every hypothesis is scored on every
cell, and the same seed gives the CPU core's hypotheses and, as with ``exact_scoring=True``, its
pose. Without the kernels they are solved on the CPU after a one-time warning; ``device="cuda"`` /
``device="cpu"`` force a route.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from . import geometry

__all__ = [
    "RansacOptions", "PoseResult",
    "estimate_pose", "estimate_pose_from_points", "estimate_pose_rgbd", "estimate_pose_batch",
    "p3p", "rigid_align", "refine_pose", "soft_score",
]

ArrayLike = Any  # numpy array or torch tensor


@dataclass(frozen=True)
class RansacOptions:
    """RANSAC settings; defaults are DSAC*'s (64 hypotheses, tau = 10 px, alpha = 100, 100 px cap)."""

    num_hypotheses: int = 64
    threshold: float = 10.0
    alpha: float = 100.0
    max_reprojection_error: float = 100.0
    max_tries_per_hypothesis: int = 1000000 // 64
    adaptive: bool = False
    confidence: float = 0.999
    max_iterations: int = 100000
    min_iterations: int = 0
    early_exit: bool = True
    exact_scoring: bool = False  # test mode: float64 scores on every cell and float64 LM (else float32, preemptive)
    preemptive_cells: int = 256  # fixed count: rank hypotheses on this many random cells first (0: off)
    preemptive_keep: int = 8     # ... and score the best this many on every cell
    refine: bool = True
    refine_rounds: int = 100
    lm_iterations: int = 10
    robust_scale: float = 0.0   # px; > 0: after the refinement, re-fit the inliers with a Cauchy loss (test mode)
    robust_rounds: int = 4      # ... reweighting rounds
    training: bool = False
    refine_all: bool = False
    seed: int = 0
    num_threads: int = 0  # threads over hypotheses of one frame; 0: automatic (1 unless the work is large)

    def validate(self) -> "RansacOptions":
        """Return self; raise ValueError naming the first option out of range."""
        checks = [
            ("num_hypotheses", self.num_hypotheses >= 1),
            ("threshold", math.isfinite(self.threshold) and self.threshold > 0),
            ("alpha", math.isfinite(self.alpha) and self.alpha > 0),
            ("max_reprojection_error", self.max_reprojection_error > 0),
            ("max_tries_per_hypothesis", self.max_tries_per_hypothesis >= 1),
            ("confidence", 0 < self.confidence < 1),
            ("max_iterations", self.max_iterations >= 1),
            ("min_iterations", self.min_iterations >= 0),
            ("refine_rounds", self.refine_rounds >= 0),
            ("lm_iterations", self.lm_iterations >= 0),
            ("preemptive_cells", self.preemptive_cells >= 0),
            ("preemptive_keep", self.preemptive_keep >= 1),
            ("seed", _valid_seed(self.seed)),
            ("robust_scale", math.isfinite(self.robust_scale) and self.robust_scale >= 0),
            ("robust_rounds", self.robust_rounds >= 0),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"{name}: invalid value {getattr(self, name)!r}")
        if self.training and self.adaptive:
            raise ValueError("training: the training mode needs a fixed hypothesis count (adaptive=False)")
        if self.training and self.robust_scale > 0:
            raise ValueError("robust_scale: the robust re-fit is for test mode (training=False)")
        return self

    def to_core(self) -> dict:
        return dict(vars(self))  # the fields (a plain dataclass: its __dict__ holds exactly them)


@dataclass
class PoseResult:
    """Pose of one frame.

    Attributes:
        R: ``(3, 3)`` world-to-camera rotation.
        t: ``(3,)`` world-to-camera translation.
        pose: ``(4, 4)`` camera-to-world matrix (the convention of pose files).
        inliers: bool mask of correspondences with error < threshold under the final pose, shaped
            like the input cells: ``(H, W)`` for coordinate maps, ``(N,)`` for explicit points.
        score: soft inlier score of the final pose (sum of weights times ``1 - sigmoid``).
        num_inliers: number of inliers.
        num_hypotheses: hypotheses that passed the 4th-cell check and were scored.
        num_samples: minimal samples drawn.
        selected: index of the chosen hypothesis (fixed mode) or draw (adaptive mode).
        selected_score: soft score of the chosen hypothesis before refinement.
        hypotheses_R, hypotheses_t: training mode, ``(M, 3, 3)`` and ``(M, 3)`` unrefined hypotheses.
        logits: training mode, ``(M,)`` ``alpha * score / sum(w)`` (``-inf`` for a failed hypothesis).
        samples: training mode, ``(M, 4)`` flat cell indices of each sample (3 solve, 4th verifies;
            ``-1`` for a failed hypothesis); for maps the index is ``i * W + j``.
        refined_R, refined_t: training mode with ``refine_all``, every hypothesis refined.
    """

    R: np.ndarray
    t: np.ndarray
    pose: np.ndarray
    inliers: np.ndarray
    score: float
    num_inliers: int
    num_hypotheses: int
    num_samples: int
    selected: int
    selected_score: float
    hypotheses_R: Optional[np.ndarray] = None
    hypotheses_t: Optional[np.ndarray] = None
    logits: Optional[np.ndarray] = None
    samples: Optional[np.ndarray] = None
    refined_R: Optional[np.ndarray] = None
    refined_t: Optional[np.ndarray] = None


# --------------------------------------------------------------------------- input checks

_REAL_KINDS = "fiu"  # numpy dtype kinds accepted as real values: float, signed and unsigned integer


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    """numpy view/copy of an array or (any-device) torch tensor; ValueError for other objects."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise ValueError(f"{name}: cannot convert to an array ({exc})") from None
    return arr


def _as_float(x: ArrayLike, name: str, shape: Tuple[Optional[int], ...]) -> np.ndarray:
    """float64 C-contiguous array with the given shape (None = any size); checks dtype and shape."""
    arr = _to_numpy(x, name)
    if arr.dtype.kind not in _REAL_KINDS:
        raise ValueError(f"{name}: expected a real-valued float array, got dtype {arr.dtype}")
    want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
    if arr.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, arr.shape)):
        raise ValueError(f"{name}: expected shape {want}, got {tuple(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _as_mask(x: Optional[ArrayLike], name: str, shape: Tuple[int, ...]) -> Optional[np.ndarray]:
    if x is None:
        return None
    arr = _to_numpy(x, name)
    if arr.dtype != bool:
        raise ValueError(f"{name}: expected a boolean mask, got dtype {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(arr.shape)}")
    return arr


def _as_weights(x: Optional[ArrayLike], name: str, shape: Tuple[int, ...]) -> Optional[np.ndarray]:
    if x is None:
        return None
    arr = _as_float(x, name, tuple(shape))
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name}: weights must be finite and non-negative")
    return arr


def _intrinsics(K: ArrayLike, name: str = "K") -> np.ndarray:
    """(fx, fy, cx, cy) from a 3x3 pinhole matrix, checked by geometry.check_intrinsics.

    A float64 numpy K is checked once per distinct matrix (cached on its bytes): the same camera
    comes back every frame. The result is read-only."""
    if type(K) is np.ndarray and K.dtype == np.float64 and K.shape == (3, 3):
        return _intrinsics_cached(K.tobytes(), name)
    return _intrinsics_checked(K, name)


def _intrinsics_checked(K: ArrayLike, name: str) -> np.ndarray:
    (fx, skew, cx), (_, fy, cy), _ = geometry.check_intrinsics(_to_numpy(K, name), name).tolist()
    if skew != 0:
        raise ValueError(f"{name}: skewed intrinsics (K[0, 1] != 0) are not supported")
    out = np.array((fx, fy, cx, cy))
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=32)
def _intrinsics_cached(K_bytes: bytes, name: str) -> np.ndarray:
    return _intrinsics_checked(np.frombuffer(K_bytes).reshape(3, 3), name)


def _valid_seed(seed: Any) -> bool:
    try:
        return 0 <= int(seed) < 2 ** 64
    except (TypeError, ValueError):
        return False


def _options(options: dict) -> RansacOptions:
    try:
        opts = RansacOptions(**options)
    except TypeError as exc:
        raise ValueError(f"unknown RANSAC option: {exc}") from None
    return opts.validate()


@functools.lru_cache(maxsize=64)
def _options_cached(keys: Tuple[str, ...], values: Tuple[Any, ...], types: Tuple[type, ...]) -> Tuple[RansacOptions, Any]:
    opts = _options(dict(zip(keys, values)))
    return opts, _core.CoreOptions(opts.to_core())


def _options_for_core(options: dict) -> Tuple[RansacOptions, Any, int]:
    """``_options(options)`` without its seed, the same parsed for the core (``_core.CoreOptions``),
    and the seed.

    Validated and parsed once per distinct set of options, cached on everything but the seed, which
    usually changes every call and is checked here: right after other work (a network, another
    solver) each Python-level step costs ~1-3 us, and validating the options every frame cost
    30-70 us of a ~0.8 ms call. The seed goes to the core as its own argument."""
    rest = dict(options)
    seed = rest.pop("seed", 0)
    try:  # keys in call order, values with their types (64 and 64.0 are different options)
        opts, core = _options_cached(tuple(rest), tuple(rest.values()), tuple(map(type, rest.values())))
    except TypeError:  # an unhashable value: validate it uncached (and raise the usual message)
        opts = _options(options)
        return opts, _core.CoreOptions(opts.to_core()), int(opts.seed)
    if not (type(seed) is int and 0 <= seed < 2 ** 64):
        if not _valid_seed(seed):
            raise ValueError(f"seed: invalid value {seed!r}")
        seed = int(seed)
    return opts, core, seed


def _check_finite(values: np.ndarray, valid: Optional[np.ndarray], name: str) -> None:
    """Raise when a valid row of ``values (N, C)`` holds NaN or inf."""
    if math.isfinite(values.sum()):  # fast path: a finite sum means every entry is finite
        return
    bad = ~np.isfinite(values).all(axis=-1)
    if valid is not None:
        bad &= valid
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} valid entries contain NaN or inf "
                         f"(mask them out with `mask`)")


def _combine(mask: Optional[np.ndarray], weights: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """Per-correspondence weights for the core (0 drops a correspondence), or None for all ones."""
    if mask is None and weights is None:
        return None
    w = np.ones(mask.shape if mask is not None else weights.shape) if weights is None else weights.copy()
    if mask is not None:
        w[~mask] = 0.0
    return np.ascontiguousarray(w, dtype=np.float64)


def _count_valid(weights: Optional[np.ndarray], n: int, name: str) -> None:
    valid = n if weights is None else int(np.count_nonzero(weights))
    if valid < 4:
        raise ValueError(f"{name}: fewer than 4 valid correspondences (got {valid})")


def _result_of(d: dict) -> PoseResult:
    """The result of ``_core.ransac(..., shape=...)``, whose dict holds exactly PoseResult's fields
    (inliers already shaped): taken as the instance's attributes rather than passed through the
    generated ``__init__``, ~20 us less on a cold call."""
    result = object.__new__(PoseResult)
    result.__dict__.update(d)
    return result


def _result(d: dict, cells_shape: Tuple[int, ...]) -> PoseResult:
    R, t, pose = d["R"], d["t"], d["pose"]
    extra = {k: d.get(k) for k in ("hypotheses_R", "hypotheses_t", "logits", "samples", "refined_R", "refined_t")}
    return PoseResult(R=R, t=t, pose=pose, inliers=d["inliers"].reshape(cells_shape), score=float(d["score"]),
                      num_inliers=int(d["num_inliers"]), num_hypotheses=int(d["num_hypotheses"]),
                      num_samples=int(d["num_samples"]), selected=int(d["selected"]),
                      selected_score=float(d["selected_score"]), **extra)


@functools.lru_cache(maxsize=16)
def _pixel_grid(H: int, W: int, stride: int) -> np.ndarray:
    """Read-only ``(H * W, 2)`` pixel centres of the cells (cached: the same grid every frame)."""
    grid = np.ascontiguousarray(geometry.cell_centers(H, W, stride).reshape(-1, 2))
    grid.flags.writeable = False
    return grid


def _map_planes(coords: ArrayLike, name: str, lead: Tuple[Optional[int], ...] = ()) -> np.ndarray:
    """``(..., 3, H, W)`` map -> ``(..., 3, H * W)`` planes, float32 or float64 (dtype and shape checked).

    A float32 / float64 map is not copied when its cells flatten to one stride (any C-contiguous
    map, or a channel-last one seen through a transposed view): the core reads it with its strides."""
    arr = _to_numpy(coords, name)
    shape = lead + (3, None, None)
    if arr.dtype.kind not in _REAL_KINDS:
        raise ValueError(f"{name}: expected a real-valued float array, got dtype {arr.dtype}")
    if arr.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, arr.shape)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        want = want.replace("N, 3, N, N", "B, 3, H, W").replace("(3, N, N)", "(3, H, W)")
        raise ValueError(f"{name}: expected shape {want}, got {tuple(arr.shape)}")
    flat = arr.reshape(arr.shape[:-2] + (-1,))  # a view where the strides allow it
    if flat.dtype != np.float32 and flat.dtype != np.float64:
        flat = flat.astype(np.float64)
    return flat


def _map_points(coords: ArrayLike, name: str, lead: Tuple[Optional[int], ...] = ()) -> np.ndarray:
    """``(..., 3, H, W)`` map -> float64 ``(..., H * W, 3)`` points (dtype and shape checked)."""
    flat = _map_planes(coords, name, lead)
    # One row at a time: numpy's transposing copy of the whole map is ~3x slower.
    out = np.empty(flat.shape[:-2] + (flat.shape[-1], 3))
    for k in range(3):
        out[..., k] = flat[..., k, :]
    return out


def _check_stride(stride: Any) -> int:
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride <= 0:
        raise ValueError(f"stride: expected a positive integer, got {stride!r}")
    return int(stride)


def _map_correspondences(coords: ArrayLike, stride: int, mask: Optional[ArrayLike], weights: Optional[ArrayLike],
                         name: str = "coords"):
    """Flatten a (3, H, W) map: pixels (H*W, 2), points as (3, H*W) planes, weights (H*W,) or None, (H, W).

    Finiteness is left to the core (see _raise_named)."""
    points = _map_planes(coords, name)
    H, W = np.shape(coords)[1:]
    stride = _check_stride(stride)
    m = _as_mask(mask, "mask", (H, W))
    w = _as_weights(weights, "weights", (H, W))
    wflat = _combine(None if m is None else m.reshape(-1), None if w is None else w.reshape(-1))
    return _pixel_grid(H, W, stride), points, wflat, (H, W)


def _raise_named(planes: np.ndarray, weights: Optional[np.ndarray], names: Sequence[str]) -> None:
    """After the core raised ValueError: the core checks coordinate maps for NaN / inf itself (one
    vectorised pass, cheaper than a numpy check on every frame); raise instead an error naming the
    map (frame) at fault if that was it. ``planes``: (B, 3, N) maps, ``weights``: (B, N) or None,
    ``names``: one per map."""
    for b, name in enumerate(names):
        _check_finite(planes[b].T, None if weights is None else weights[b] > 0, name)


# --------------------------------------------------------------------------- estimators

def estimate_pose(coords: ArrayLike, K: ArrayLike, stride: int = 8, *, mask: Optional[ArrayLike] = None,
                  weights: Optional[ArrayLike] = None, device: Optional[str] = None, **options: Any) -> PoseResult:
    """Camera pose from a scene-coordinate map.

    Args:
        coords: ``(3, H, W)`` scene coordinates (metres); cell ``(i, j)`` sees pixel
            ``(stride * j + stride / 2, stride * i + stride / 2)``.
        K: ``(3, 3)`` intrinsics of the full-resolution image.
        stride: pixels per cell (8 for DSAC*-style networks).
        mask: optional ``(H, W)`` bool, False drops a cell (it may then hold NaN).
        weights: optional ``(H, W)`` non-negative per-cell weights (0 drops a cell); they scale the
            soft score and the refinement.
        device: where hypotheses are scored: None / ``"auto"`` (on the GPU for a CUDA tensor when
            the extension has CUDA kernels, else on the CPU with a one-time warning), ``"cpu"``, or
            ``"cuda"`` (ValueError when the GPU route cannot run). See :mod:`transpose.ransac_gpu`.
        **options: fields of :class:`RansacOptions` (``num_hypotheses``, ``threshold``, ``adaptive``,
            ``seed``, ``training``, ...).

    Returns:
        :class:`PoseResult` with ``inliers`` of shape ``(H, W)``.
    """
    opts, core_opts, seed = _options_for_core(options)
    if device is None and mask is None and weights is None and type(coords) is np.ndarray:
        # The common call (a float map, a pinhole K, every cell) in one step; None for anything
        # else, which takes the checked path below.
        d = _core.ransac_map(coords, K, stride, core_opts, seed)
        if d is not None:
            return _result_of(d)
    if not (device is None and type(coords) is np.ndarray):  # else the CPU, without asking
        from . import ransac_gpu

        if ransac_gpu.use_gpu(coords, device, opts):
            return ransac_gpu.estimate_pose_maps(coords, K, stride, mask=mask, weights=weights, seeds=[seed],
                                                 options=dataclasses.replace(opts, seed=seed),
                                                 num_threads=opts.num_threads, single=True,
                                                 device=None if device in (None, "auto") else device)[0]
    Kv = _intrinsics(K)
    pixels, planes, w, shape = _map_correspondences(coords, stride, mask, weights)
    _count_valid(w, planes.shape[1], "coords")
    try:
        d = _core.ransac(pixels, planes, None, w, Kv, core_opts, True, seed, shape)
    except ValueError:
        _raise_named(planes[None], None if w is None else w[None], ["coords"])
        raise
    return _result_of(d)


def _point_correspondences(pixels: ArrayLike, points: ArrayLike, mask: Optional[ArrayLike],
                           weights: Optional[ArrayLike]) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Checked ``(pixels (N, 2), points (N, 3), weights (N,) or None)``: shapes, dtypes, and finite
    values wherever a correspondence counts (mask and weights combined; weight 0 = dropped)."""
    px = _as_float(pixels, "pixels", (None, 2))
    n = px.shape[0]
    pts = _as_float(points, "points", (n, 3))
    w = _combine(_as_mask(mask, "mask", (n,)), _as_weights(weights, "weights", (n,)))
    valid = None if w is None else w > 0
    _check_finite(px, valid, "pixels")
    _check_finite(pts, valid, "points")
    return px, pts, w


def estimate_pose_from_points(pixels: ArrayLike, points: ArrayLike, K: ArrayLike, *,
                              mask: Optional[ArrayLike] = None, weights: Optional[ArrayLike] = None,
                              **options: Any) -> PoseResult:
    """Camera pose from explicit correspondences: pixels ``(N, 2)`` and scene points ``(N, 3)``.

    ``mask (N,)`` / ``weights (N,)`` as in :func:`estimate_pose`; ``inliers`` has shape ``(N,)``.
    """
    _, core_opts, seed = _options_for_core(options)
    Kv = _intrinsics(K)
    px, pts, w = _point_correspondences(pixels, points, mask, weights)
    n = px.shape[0]
    _count_valid(w, n, "points")
    return _result_of(_core.ransac(px, pts, None, w, Kv, core_opts, seed=seed, shape=(n,)))


def estimate_pose_rgbd(camera_points: ArrayLike, scene_points: ArrayLike, K: ArrayLike, *,
                       mask: Optional[ArrayLike] = None, weights: Optional[ArrayLike] = None,
                       **options: Any) -> PoseResult:
    """Camera pose from RGB-D: camera-frame points vs scene points (DSAC* RGB-D mode).

    Hypotheses come from Kabsch on 3 sampled cells (the 4th must agree); scoring uses the
    reprojection error at the pixel where each camera point projects; refinement re-fits Kabsch
    on the inliers.

    Args:
        camera_points: ``(N, 3)`` or ``(3, H, W)`` points in the camera frame (from depth). Entries
            with a non-finite or non-positive depth count as missing depth and are dropped.
        scene_points: matching ``(N, 3)`` or ``(3, H, W)`` scene coordinates.
        K: ``(3, 3)`` intrinsics (used to place camera points in the image).
        mask, weights: ``(N,)`` or ``(H, W)``, as in :func:`estimate_pose`.
    """
    _, core_opts, seed = _options_for_core(options)
    Kv = _intrinsics(K)
    cam = _to_numpy(camera_points, "camera_points")
    if cam.ndim == 3:
        cam_a = _as_float(cam, "camera_points", (3, None, None))
        shape = cam_a.shape[1:]
        scene = _as_float(scene_points, "scene_points", (3,) + tuple(shape))
        cam_a = np.ascontiguousarray(cam_a.reshape(3, -1).T)
        scene = np.ascontiguousarray(scene.reshape(3, -1).T)
    else:
        cam_a = _as_float(cam, "camera_points", (None, 3))
        shape = (cam_a.shape[0],)
        scene = _as_float(scene_points, "scene_points", (cam_a.shape[0], 3))
    n = cam_a.shape[0]
    m = _as_mask(mask, "mask", shape)
    wts = _as_weights(weights, "weights", shape)
    has_depth = np.isfinite(cam_a).all(axis=1) & (np.nan_to_num(cam_a[:, 2], nan=-1.0) > 0)
    m_flat = has_depth if m is None else (m.reshape(-1) & has_depth)
    w = _combine(m_flat, None if wts is None else wts.reshape(-1))
    _check_finite(scene, w > 0, "scene_points")
    _count_valid(w, n, "camera_points")
    safe = np.ascontiguousarray(np.where(has_depth[:, None], cam_a, np.array([0.0, 0.0, 1.0])))
    uv, _ = geometry.project(safe, np.eye(4), geometry.intrinsics_matrix(*Kv))  # camera frame = world here
    pixels = np.ascontiguousarray(uv)
    return _result_of(_core.ransac(pixels, scene, safe, w, Kv, core_opts, seed=seed, shape=tuple(shape)))


def estimate_pose_batch(coords: ArrayLike, K: ArrayLike, stride: int = 8, *, mask: Optional[ArrayLike] = None,
                        weights: Optional[ArrayLike] = None, seed: Union[int, Sequence[int]] = 0,
                        num_threads: int = 0, device: Optional[str] = None, **options: Any) -> list:
    """Poses of a batch of coordinate maps, solved in parallel threads (one frame per thread).

    Args:
        coords: ``(B, 3, H, W)`` scene coordinates.
        K: ``(3, 3)`` shared or ``(B, 3, 3)`` per-frame intrinsics.
        mask, weights: optional ``(B, H, W)``.
        seed: one seed for every frame, or ``B`` seeds; frame ``b`` gives the same result as
            :func:`estimate_pose` on that frame with its seed.
        num_threads: threads over frames (0: OpenMP's default); on the GPU route, CPU threads over
            hypotheses (sampling) and frames (refinement).
        device: as in :func:`estimate_pose`; on the GPU route all frames are scored in one launch.
        **options: as in :func:`estimate_pose`.

    Returns:
        list of ``B`` :class:`PoseResult`.
    """
    opts = _options(dict(options, seed=int(seed) if np.isscalar(seed) else 0))
    from . import ransac_gpu

    if ransac_gpu.use_gpu(coords, device, opts):
        return ransac_gpu.estimate_pose_maps(coords, K, stride, mask=mask, weights=weights, seeds=seed,
                                             options=opts, num_threads=num_threads,
                                             device=None if device in (None, "auto") else device)
    planes = _map_planes(coords, "coords", (None,))
    B, _, H, W = _to_numpy(coords, "coords").shape
    if B == 0:
        return []
    Kn = _to_numpy(K, "K")
    if Kn.ndim == 2:
        Kv = np.tile(_intrinsics(Kn), (B, 1))
    else:
        if Kn.shape[:1] != (B,):
            raise ValueError(f"K: expected shape (3, 3) or ({B}, 3, 3), got {tuple(Kn.shape)}")
        Kv = np.stack([_intrinsics(k, f"K[{b}]") for b, k in enumerate(Kn)])
    if np.isscalar(seed):
        seeds = [int(seed)] * B
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != B:
            raise ValueError(f"seed: expected {B} seeds, got {len(seeds)}")
    if any(s < 0 or s >= 2 ** 64 for s in seeds):
        raise ValueError("seed: seeds must be in [0, 2**64)")
    stride = _check_stride(stride)
    m = _as_mask(mask, "mask", (B, H, W))
    wts = _as_weights(weights, "weights", (B, H, W))
    w = _combine(None if m is None else m.reshape(B, -1), None if wts is None else wts.reshape(B, -1))
    for b in range(B):
        _count_valid(None if w is None else w[b], H * W, f"coords[{b}]")
    pixels = np.ascontiguousarray(np.broadcast_to(_pixel_grid(H, W, stride), (B, H * W, 2)))
    try:
        out = _core.ransac_batch(pixels, planes, None, w, Kv, seeds, opts.to_core(), int(num_threads), planes=True)
    except ValueError:
        _raise_named(planes, w, [f"coords[{b}]" for b in range(B)])
        raise
    return [_result(d, (H, W)) for d in out]


# --------------------------------------------------------------------------- building blocks

def p3p(bearings: ArrayLike, points: ArrayLike) -> list:
    """Lambda Twist P3P: up to 4 world-to-camera ``(R (3, 3), t (3,))`` solutions.

    Args:
        bearings: ``(3, 3)``, row k = viewing direction of point k in the camera frame (any length).
        points: ``(3, 3)``, row k = world point k.
    """
    b = _as_float(bearings, "bearings", (3, 3))
    p = _as_float(points, "points", (3, 3))
    _check_finite(b, None, "bearings")
    _check_finite(p, None, "points")
    return _core.p3p(b, p)


def rigid_align(src: ArrayLike, dst: ArrayLike, weights: Optional[ArrayLike] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Weighted Kabsch: ``(R, t)`` minimising ``sum_k w_k |R src_k + t - dst_k|^2`` for ``(N, 3)`` sets."""
    s = _as_float(src, "src", (None, 3))
    d = _as_float(dst, "dst", (s.shape[0], 3))
    _check_finite(s, None, "src")
    _check_finite(d, None, "dst")
    w = _as_weights(weights, "weights", (s.shape[0],))
    return _core.rigid_align(s, d, w)


def refine_pose(pixels: ArrayLike, points: ArrayLike, K: ArrayLike, R: ArrayLike, t: ArrayLike, *,
                weights: Optional[ArrayLike] = None, threshold: float = 10.0,
                max_reprojection_error: float = 100.0, rounds: int = 100,
                lm_iterations: int = 10) -> Tuple[np.ndarray, np.ndarray, int]:
    """DSAC*-style refinement of a world-to-camera pose on ``(N, 2)`` pixels / ``(N, 3)`` points.

    Returns ``(R, t, n)`` with ``n`` the inliers used by the last fit (0: nothing was fitted).
    """
    Kv = _intrinsics(K)
    px, pts, w = _point_correspondences(pixels, points, None, weights)
    return _core.refine_pose(px, pts, None, w, Kv, _as_float(R, "R", (3, 3)), _as_float(t, "t", (3,)),
                             float(threshold), float(max_reprojection_error), int(rounds), int(lm_iterations))


def soft_score(pixels: ArrayLike, points: ArrayLike, K: ArrayLike, R: ArrayLike, t: ArrayLike, *,
               weights: Optional[ArrayLike] = None, threshold: float = 10.0,
               max_reprojection_error: float = 100.0, float32: bool = False) -> Tuple[float, int, np.ndarray]:
    """``(soft score, hard inlier count, errors (N,))`` of a world-to-camera pose (NaN error = dropped).

    ``float32=True`` computes score and count as test-mode RANSAC ranks its hypotheses (float32,
    ~1e-6 relative to the float64 score); the errors stay float64.
    """
    Kv = _intrinsics(K)
    px, pts, w = _point_correspondences(pixels, points, None, weights)
    return _core.soft_score(px, pts, w, Kv, _as_float(R, "R", (3, 3)), _as_float(t, "t", (3,)),
                            float(threshold), float(max_reprojection_error), bool(float32))


# --------------------------------------------------------------------------- end-to-end training (DSAC* loss)

def _dsac_frames(coords: np.ndarray, K: ArrayLike, stride: int, mask: Optional[ArrayLike],
                 weights: Optional[ArrayLike], camera_coords: Optional[ArrayLike]):
    """Flatten ``(B, 3, H, W)`` maps for the core: pixels, points, camera points, weights, K ``(B, 4)``."""
    B, _, H, W = coords.shape
    points = _map_points(coords, "coords", (None,))
    Kn = _to_numpy(K, "K")
    if Kn.ndim == 2:
        Kv = np.tile(_intrinsics(Kn), (B, 1))
    elif Kn.ndim == 3 and Kn.shape[0] == B:
        Kv = np.stack([_intrinsics(k, f"K[{b}]") for b, k in enumerate(Kn)])
    else:
        raise ValueError(f"K: expected shape (3, 3) or ({B}, 3, 3), got {tuple(Kn.shape)}")
    m = _as_mask(mask, "mask", (B, H, W))
    wts = _as_weights(weights, "weights", (B, H, W))
    w = _combine(None if m is None else m.reshape(B, -1), None if wts is None else wts.reshape(B, -1))
    cam = None
    if camera_coords is None:
        pixels = np.ascontiguousarray(np.broadcast_to(_pixel_grid(H, W, _check_stride(stride)), (B, H * W, 2)))
    else:
        cam = _map_points(camera_coords, "camera_coords", (B,))
        if cam.shape != points.shape:
            raise ValueError(f"camera_coords: expected shape {(B, 3, H, W)}, got {_to_numpy(camera_coords, 'camera_coords').shape}")
        has_depth = np.isfinite(cam).all(axis=-1) & (np.nan_to_num(cam[..., 2], nan=-1.0) > 0)
        w = np.where(has_depth, 1.0 if w is None else w, 0.0)
        cam = np.ascontiguousarray(np.where(has_depth[..., None], cam, np.array([0.0, 0.0, 1.0])))
        # scoring compares the reprojected scene point with the pixel where the camera point projects
        pixels = np.stack([cam[..., 0] / cam[..., 2] * Kv[:, None, 0] + Kv[:, None, 2],
                           cam[..., 1] / cam[..., 2] * Kv[:, None, 1] + Kv[:, None, 3]], axis=-1)
        pixels = np.ascontiguousarray(pixels)
    for b in range(B):
        _check_finite(points[b], None if w is None else w[b] > 0, f"coords[{b}]")
        _count_valid(None if w is None else w[b], H * W, f"coords[{b}]")
    return pixels, points, cam, None if w is None else np.ascontiguousarray(w, dtype=np.float64), Kv


def dsac_loss_numpy(coords: ArrayLike, K: ArrayLike, gt_pose: ArrayLike, stride: int = 8, *,
                    mask: Optional[ArrayLike] = None, weights: Optional[ArrayLike] = None,
                    camera_coords: Optional[ArrayLike] = None, seed: Union[int, Sequence[int]] = 0,
                    weight_rot: float = 1.0, weight_trans: float = 100.0, cut: float = 100.0,
                    min_probability: float = 1e-6, gradient: bool = True, polish_iterations: int = 2,
                    num_threads: int = 0, **options: Any) -> Tuple[np.ndarray, Optional[np.ndarray], list]:
    """DSAC*'s expected pose loss per frame and its gradient, without torch.

    Args:
        coords: ``(B, 3, H, W)`` scene coordinates.
        K: ``(3, 3)`` or ``(B, 3, 3)``; gt_pose: ``(4, 4)`` or ``(B, 4, 4)`` camera-to-world.
        camera_coords: RGB-D, ``(B, 3, H, W)`` camera-frame points (cells without depth: z <= 0 or NaN).
        seed: one seed or ``B`` seeds (frame ``b`` draws its hypotheses as ``estimate_pose`` in
            training mode with that seed).
        weight_rot, weight_trans, cut: the pose loss (per degree, per metre, soft clamp).
        min_probability: hypotheses less likely than this are left out of the gradient.
        **options: RANSAC options (``num_hypotheses``, ``threshold``, ``alpha``, ...).

    Returns:
        ``(losses (B,), grad (B, 3, H, W) of each frame's loss or None, infos)``; a frame where no
        hypothesis could be drawn has loss 0, gradient 0 and ``info["status"] != 0``.
    """
    arr = _to_numpy(coords, "coords")
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ValueError(f"coords: expected shape (B, 3, H, W), got {tuple(arr.shape)}")
    B, _, H, W = arr.shape
    opts = _options(dict(options, training=True))
    core_opts = opts.to_core()
    core_opts["refine_all"] = True
    pixels, points, cam, w, Kv = _dsac_frames(arr, K, stride, mask, weights, camera_coords)
    gt = _to_numpy(gt_pose, "gt_pose").astype(np.float64)
    if gt.shape == (4, 4):
        gt = np.broadcast_to(gt, (B, 4, 4))
    if gt.shape != (B, 4, 4) or not np.isfinite(gt).all():
        raise ValueError(f"gt_pose: expected finite (4, 4) or ({B}, 4, 4) poses, got {tuple(gt.shape)}")
    w2c = geometry.invert_pose(np.ascontiguousarray(gt))
    seeds = [int(seed)] * B if np.isscalar(seed) else [int(s) for s in seed]
    if len(seeds) != B:
        raise ValueError(f"seed: expected {B} seeds, got {len(seeds)}")
    out = _core.dsac_loss_batch(pixels, points, cam, w, Kv, np.ascontiguousarray(w2c[:, :3, :3]),
                                np.ascontiguousarray(w2c[:, :3, 3]), seeds, core_opts, float(weight_rot),
                                float(weight_trans), float(cut), float(min_probability), bool(gradient),
                                int(polish_iterations), int(num_threads))
    losses = np.array([d["loss"] if d["status"] == 0 else 0.0 for d in out])
    grad = None
    if gradient:
        grad = np.zeros((B, 3, H, W))
        for b, d in enumerate(out):
            if d["status"] == 0:
                grad[b] = d["grad"].T.reshape(3, H, W)
    return losses, grad, out


def _torch():
    import torch

    return torch


def dsac_loss(coords: "torch.Tensor", K: ArrayLike, gt_pose: ArrayLike, stride: int = 8, *,
              return_info: bool = False, **kwargs: Any):
    """Differentiable DSAC* loss: mean over the batch of the expected pose loss ``sum_h p_h l_h``.

    ``coords`` is a ``(B, 3, H, W)`` (or ``(3, H, W)``) torch tensor; the result is a scalar
    tensor whose backward pass gives the analytic gradient computed by the native core (through
    the soft-inlier scores, the softmax, the minimal solver and the refined poses). The core runs
    in float64 on the CPU; the gradient comes back in ``coords``' dtype and device. Keyword
    arguments are those of :func:`dsac_loss_numpy`. ``return_info=True`` also returns the
    per-frame dicts (logits, probabilities, per-hypothesis losses, refined poses, status).
    """
    torch = _torch()
    if not torch.is_tensor(coords):
        raise ValueError("coords: expected a torch tensor (use dsac_loss_numpy for numpy arrays)")
    single = coords.dim() == 3
    batch = coords.unsqueeze(0) if single else coords
    if single:
        gt = _to_numpy(gt_pose, "gt_pose")
        kwargs = dict(kwargs)
        for key in ("mask", "weights", "camera_coords"):
            if kwargs.get(key) is not None:
                kwargs[key] = _to_numpy(kwargs[key], key)[None]
        gt_pose = gt[None] if gt.ndim == 2 else gt
    info: list = []
    loss = _DsacLossFunction.apply(batch, (K, gt_pose, stride, kwargs, info))
    return (loss, info) if return_info else loss


def _make_function():
    torch = _torch()

    class DsacLossFunction(torch.autograd.Function):
        """Forward: the core's expected loss (and gradient, kept for backward); backward: scale it."""

        @staticmethod
        def forward(ctx, coords, args):
            K, gt_pose, stride, kwargs, info = args
            need = bool(ctx.needs_input_grad[0])  # forward-only when nothing asks for the gradient
            losses, grad, out = dsac_loss_numpy(coords.detach().cpu().double().numpy(), K, gt_pose, stride,
                                                gradient=need, **kwargs)
            info.extend(out)
            B = coords.shape[0]
            if need:
                ctx.save_for_backward(torch.from_numpy(grad / B).to(device=coords.device, dtype=coords.dtype))
            return coords.new_tensor(float(losses.sum() / B))

        @staticmethod
        def backward(ctx, grad_output):
            (g,) = ctx.saved_tensors
            return grad_output * g, None

    return DsacLossFunction


class _LazyFunction:
    """Builds the autograd Function on first use, so importing this module does not import torch."""

    _fn = None

    @classmethod
    def apply(cls, *args):
        if cls._fn is None:
            cls._fn = _make_function()
        return cls._fn.apply(*args)


_DsacLossFunction = _LazyFunction
__all__ += ["dsac_loss", "dsac_loss_numpy"]
