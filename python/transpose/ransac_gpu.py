"""GPU route of :mod:`transpose.ransac`: coordinate maps on a CUDA device stay there.

DSAC*'s fixed-count test mode splits into a cheap part and a heavy part. Per hypothesis, drawing 4
cells, solving P3P on 3 and checking the 4th costs about a microsecond on the CPU; scoring it costs
one reprojection, a sqrt and an exp per cell (64-1024 hypotheses x 4800 cells). So:

- the native core copies the map to the host once (60 KB at 80x60) and draws the hypotheses there,
  with the same random streams as the CPU core (same seed, same hypotheses);
- the CUDA kernel of ``csrc/cuda`` scores every hypothesis of every frame on every cell, reading the
  map where the network wrote it, in float64 with the CPU core's formula (shared source, see
  ``csrc/cuda/cell_score.h``), in stream order after the network;
- the argmax (ties to the lowest index) and the refinement of the winner run on the CPU.

A frame therefore gives the CPU core's pose up to the rounding of the score sums. Training and
adaptive RANSAC need the per-hypothesis CPU loop and stay there.

Use :func:`transpose.ransac.estimate_pose` / :func:`~transpose.ransac.estimate_pose_batch`: a CUDA
tensor takes this route when the extension has the kernels (``setup_scripts/build_cuda.sh``) and
otherwise falls back to the CPU with a one-time warning; ``device="cuda"`` demands it (ValueError
when impossible), ``device="cpu"`` declines it. Tensors on the CPU run the same driver with the
kernels' host twin (:func:`estimate_pose_maps`, :func:`score_hypotheses`), which is how this module
is tested without a GPU.
"""
from __future__ import annotations

import warnings
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from . import ransac

__all__ = ["extension_has_cuda", "cuda_available", "use_gpu", "estimate_pose_maps", "score_hypotheses"]

DEVICES = (None, "auto", "cpu", "cuda")
_warned: set = set()


def _torch():
    import torch

    return torch


def extension_has_cuda() -> bool:
    """True when ``transpose._core`` was built with the CUDA kernels."""
    return bool(getattr(_core, "has_cuda", lambda: False)())


def cuda_available() -> bool:
    """True when the GPU route can run: kernels compiled in, torch sees a CUDA device."""
    if not extension_has_cuda():
        return False
    try:
        return bool(_torch().cuda.is_available()) and _core.cuda_device_count() > 0
    except ImportError:  # pragma: no cover - torch is a dependency
        return False


def _is_cuda_tensor(x: Any) -> bool:
    return bool(getattr(x, "is_cuda", False))


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def use_gpu(coords: Any, device: Optional[str], opts: "ransac.RansacOptions") -> bool:
    """Whether :func:`~transpose.ransac.estimate_pose` takes the GPU route for ``coords``.

    ``device``: None or ``"auto"`` (the GPU for CUDA tensors when possible, else the CPU with a
    one-time warning), ``"cpu"`` (never) or ``"cuda"`` (always; ValueError when impossible).
    """
    if device not in DEVICES:
        raise ValueError(f"device: expected None, 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cpu" or (device in (None, "auto") and not _is_cuda_tensor(coords)):
        return False
    mode = "training" if opts.training else "adaptive" if opts.adaptive else None
    if device == "cuda":
        if mode:
            raise ValueError(f"device: the GPU path runs the fixed-count test mode only, not {mode} mode "
                             f"(use device='cpu')")
        if not extension_has_cuda():
            raise ValueError("device: transpose._core was built without CUDA kernels; rebuild it with "
                             "`bash setup_scripts/build_cuda.sh`")
        if not cuda_available():
            raise ValueError("device: 'cuda' asked for, but torch sees no CUDA device")
        return True
    if mode:
        _warn_once(mode, f"transpose.ransac: {mode} mode runs on the CPU; the coordinate map is copied "
                         f"from the GPU (the GPU path covers the fixed-count test mode)")
        return False
    if not cuda_available():
        _warn_once("build", "transpose.ransac: coordinate maps on a CUDA device are solved on the CPU "
                            "because transpose._core was built without CUDA kernels (rebuild with "
                            "`bash setup_scripts/build_cuda.sh`)" if not extension_has_cuda() else
                   "transpose.ransac: CUDA kernels are compiled in but no CUDA device is usable; "
                   "solving on the CPU")
        return False
    return True


# --------------------------------------------------------------------------- inputs as device tensors

def _shape_text(shape: Tuple[Optional[int], ...]) -> str:
    return "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"


def _as_tensor(x: Any, device: Any) -> "torch.Tensor":
    torch = _torch()
    if torch.is_tensor(x):
        return x.detach().to(device)
    return torch.as_tensor(np.ascontiguousarray(x), device=device)  # torch refuses negative strides


def _map_tensor(coords: Any, device: Any, single: bool) -> "torch.Tensor":
    """``(B, 3, H, W)`` contiguous float32/float64 tensor on ``device`` (``(3, H, W)`` when single)."""
    torch = _torch()
    t = _as_tensor(coords, device)
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"coords: expected a real-valued float array, got dtype {t.dtype}")
    want = "(3, H, W)" if single else "(B, 3, H, W)"
    if t.dim() != (3 if single else 4) or t.shape[-3] != 3:
        raise ValueError(f"coords: expected shape {want}, got {tuple(t.shape)}")
    if single:
        t = t[None]
    if t.dtype not in (torch.float32, torch.float64):
        # the kernel reads float32 or float64; half precision widens exactly, integers as the CPU path
        t = t.to(torch.float32 if t.is_floating_point() else torch.float64)
    return t.contiguous()


def _cell_weights(mask: Any, weights: Any, shape: Tuple[int, ...], device: Any,
                  single: bool) -> Optional["torch.Tensor"]:
    """Combined float64 ``(B, H, W)`` weights (0 drops a cell) on ``device``, or None for all ones."""
    torch = _torch()
    want = shape[1:] if single else shape
    w = None
    if weights is not None:
        w = _as_tensor(weights, device)
        if w.dtype == torch.bool or w.is_complex():
            raise ValueError(f"weights: expected a real-valued float array, got dtype {w.dtype}")
        if tuple(w.shape) != tuple(want):
            raise ValueError(f"weights: expected shape {_shape_text(want)}, got {tuple(w.shape)}")
        w = w.to(torch.float64).reshape(shape)
        if not bool(torch.all(torch.isfinite(w) & (w >= 0))):
            raise ValueError("weights: weights must be finite and non-negative")
    if mask is not None:
        m = _as_tensor(mask, device)
        if m.dtype != torch.bool:
            raise ValueError(f"mask: expected a boolean mask, got dtype {m.dtype}")
        if tuple(m.shape) != tuple(want):
            raise ValueError(f"mask: expected shape {tuple(want)}, got {tuple(m.shape)}")
        m = m.reshape(shape)
        w = m.to(torch.float64) if w is None else torch.where(m, w, torch.zeros((), dtype=w.dtype, device=device))
    return None if w is None else w.contiguous()


def _check_cells(coords: "torch.Tensor", w: Optional["torch.Tensor"], single: bool) -> None:
    """ValueError for NaN / inf in a used cell or fewer than 4 used cells (one device sync)."""
    torch = _torch()
    B, _, H, W = coords.shape
    bad = ~torch.isfinite(coords).all(dim=1)  # (B, H, W)
    used = torch.ones_like(bad) if w is None else w > 0
    stats = torch.stack([(bad & used).sum(dim=(1, 2)), used.sum(dim=(1, 2))]).cpu().numpy()
    for b in range(B):
        name = "coords" if single else f"coords[{b}]"
        if stats[0, b]:
            raise ValueError(f"{name}: {int(stats[0, b])} valid entries contain NaN or inf (mask them out with `mask`)")
        if stats[1, b] < 4:
            raise ValueError(f"{name}: fewer than 4 valid correspondences (got {int(stats[1, b])})")


# --------------------------------------------------------------------------- the route

def estimate_pose_maps(coords: Any, K: Any, stride: int = 8, *, mask: Any = None, weights: Any = None,
                       seeds: Union[int, Sequence[int]] = 0, options: Optional["ransac.RansacOptions"] = None,
                       num_threads: int = 0, single: bool = False,
                       device: Any = None) -> List["ransac.PoseResult"]:
    """Poses of coordinate maps with every hypothesis scored in one batched call.

    Args:
        coords: ``(B, 3, H, W)`` (``(3, H, W)`` with ``single``) scene coordinates: a CUDA tensor is
            scored by the GPU kernel in place; anything else (numpy, CPU tensor) by the host twin
            of the kernel (same per-cell code, on the CPU; for tests and machines without a GPU).
        K: ``(3, 3)`` shared or ``(B, 3, 3)`` per-frame intrinsics (host or device).
        stride: pixels per cell.
        mask, weights: optional ``(B, H, W)`` (``(H, W)`` with ``single``), as in
            :func:`~transpose.ransac.estimate_pose`.
        seeds: one seed for every frame or one per frame (frame ``b`` draws hypothesis ``h`` from
            the stream ``(seeds[b], h)``, as the CPU core).
        options: :class:`~transpose.ransac.RansacOptions` (fixed-count test mode).
        num_threads: CPU threads over hypotheses (sampling) and frames (refinement); 0: all.
        single: ``coords`` is one ``(3, H, W)`` map.
        device: where to score: None for where ``coords`` lives (a CUDA tensor: its GPU; else the
            host twin), or a torch device such as ``"cuda"`` to upload a host map first.

    Returns:
        list of ``B`` :class:`~transpose.ransac.PoseResult` with ``inliers`` of shape ``(H, W)``.
    """
    opts = (options or ransac.RansacOptions()).validate()
    if opts.training or opts.adaptive:
        raise ValueError("options: the batched (GPU) path runs the fixed-count test mode only")
    torch = _torch()
    device = torch.device(device if device is not None else "cuda" if _is_cuda_tensor(coords) else "cpu")
    if device.type == "cuda" and device.index is None:  # a bare "cuda": the map's GPU, else the current one
        device = coords.device if _is_cuda_tensor(coords) else torch.device("cuda", torch.cuda.current_device())
    Kv = _frame_intrinsics(K, 1, single) if single else None  # checked in the CPU path's order
    maps = _map_tensor(coords, device, single)
    B, _, H, W = maps.shape
    Kv = Kv if single else _frame_intrinsics(K, B, single)
    stride = ransac._check_stride(stride)
    w = _cell_weights(mask, weights, (B, H, W), device, single)
    _check_cells(maps, w, single)
    seeds = [int(seeds)] * B if np.isscalar(seeds) else [int(s) for s in seeds]
    if len(seeds) != B:
        raise ValueError(f"seed: expected {B} seeds, got {len(seeds)}")
    if any(s < 0 or s >= 2 ** 64 for s in seeds):
        raise ValueError("seed: seeds must be in [0, 2**64)")
    if B == 0:
        return []
    if maps.is_cuda:
        stream = torch.cuda.current_stream(maps.device).cuda_stream
        out = _core.ransac_maps_cuda(maps.data_ptr(), str(maps.dtype).replace("torch.", ""),
                                     0 if w is None else w.data_ptr(), B, H, W, Kv, float(stride), seeds,
                                     opts.to_core(), int(num_threads), maps.device.index, stream)
    else:
        out = _core.ransac_maps_host(maps.numpy(), None if w is None else w.numpy(), Kv, float(stride), seeds,
                                     opts.to_core(), int(num_threads))
    return [ransac._result(d, (H, W)) for d in out]


def _frame_intrinsics(K: Any, B: int, single: bool) -> np.ndarray:
    """``(B, 4)`` float64 ``(fx, fy, cx, cy)`` from ``(3, 3)`` or ``(B, 3, 3)`` intrinsics."""
    Kn = ransac._to_numpy(K, "K")
    if Kn.ndim == 2 or single:
        return np.ascontiguousarray(np.tile(ransac._intrinsics(Kn), (B, 1)))
    if Kn.shape[:1] != (B,):
        raise ValueError(f"K: expected shape (3, 3) or ({B}, 3, 3), got {tuple(Kn.shape)}")
    return np.ascontiguousarray(np.stack([ransac._intrinsics(k, f"K[{b}]") for b, k in enumerate(Kn)]))


def score_hypotheses(coords: Any, K: Any, R: Any, t: Any, stride: int = 8, *, mask: Any = None,
                     weights: Any = None, threshold: float = 10.0, max_reprojection_error: float = 100.0,
                     num_threads: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Soft inlier scores and hard inlier counts of many world-to-camera hypotheses, in one call.

    Args:
        coords: ``(B, 3, H, W)`` maps; a CUDA tensor is scored by the kernel in place, anything
            else by its host twin.
        K: ``(3, 3)`` or ``(B, 3, 3)``.
        R, t: ``(B, M, 3, 3)`` and ``(B, M, 3)`` hypotheses.
        mask, weights: optional ``(B, H, W)``.

    Returns:
        ``(scores (B, M) float64, inliers (B, M) int32)``, as ``transpose.ransac.soft_score`` gives
        them one pose at a time.
    """
    torch = _torch()
    device = coords.device if _is_cuda_tensor(coords) else torch.device("cpu")
    maps = _map_tensor(coords, device, single=False)
    B, _, H, W = maps.shape
    Kv = _frame_intrinsics(K, B, single=False)
    w = _cell_weights(mask, weights, (B, H, W), device, single=False)
    Rn = np.ascontiguousarray(ransac._to_numpy(R, "R"), dtype=np.float64)
    tn = np.ascontiguousarray(ransac._to_numpy(t, "t"), dtype=np.float64)
    if maps.is_cuda:
        if not extension_has_cuda():
            raise ValueError("coords: a CUDA tensor needs transpose._core built with CUDA kernels "
                             "(`bash setup_scripts/build_cuda.sh`)")
        stream = torch.cuda.current_stream(maps.device).cuda_stream
        return _core.score_hypotheses_cuda(maps.data_ptr(), str(maps.dtype).replace("torch.", ""),
                                           0 if w is None else w.data_ptr(), B, H, W, Kv, float(stride), Rn, tn,
                                           float(threshold), float(max_reprojection_error), maps.device.index,
                                           stream)
    return _core.score_hypotheses_host(maps.numpy(), None if w is None else w.numpy(), Kv, float(stride), Rn, tn,
                                       float(threshold), float(max_reprojection_error), int(num_threads))
