"""Losses: scene-coordinate regression (reprojection, coordinates, uncertainty NLL).

All functions take batched tensors; shapes are given in each docstring. Poses are camera-to-world
``(B, 4, 4)``; intrinsics ``(B, 3, 3)``; coordinate maps ``(B, 3, h, w)`` whose cell ``(i, j)`` sees
pixel ``(stride * j + stride / 2, stride * i + stride / 2)`` (see :mod:`transpose.geometry`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from .geometry import cell_centers_torch, project_torch, transform_points_torch


def reprojection_errors(coords: torch.Tensor, T_c2w: torch.Tensor, K: torch.Tensor,
                        stride: int = 8) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reprojection error in pixels and camera depth of every predicted coordinate.

    Args:
        coords: ``(B, 3, h, w)`` predicted scene coordinates.
        T_c2w: ``(B, 4, 4)`` ground-truth camera-to-world poses.
        K: ``(B, 3, 3)`` intrinsics.

    Returns:
        ``(errors (B, h, w), depth (B, h, w))``; the error of a point behind the camera is computed
        with its depth clamped and is meaningless (mask it with ``depth``).
    """
    B, _, h, w = coords.shape
    pts = coords.permute(0, 2, 3, 1).reshape(B, -1, 3)
    cam = transform_points_torch(torch.linalg.inv(T_c2w), pts)
    uv = project_torch(cam, K, min_depth=1e-3)
    pix = cell_centers_torch(h, w, stride, coords.device, coords.dtype).reshape(1, -1, 2)
    err = (uv - pix).norm(dim=-1)
    return err.reshape(B, h, w), cam[..., 2].reshape(B, h, w)


def constant_depth_target(T_c2w: torch.Tensor, K: torch.Tensor, h: int, w: int, depth: float,
                          stride: int = 8) -> torch.Tensor:
    """Scene coordinates ``(B, 3, h, w)`` at a constant ``depth`` along each cell's ray (DSAC*'s RGB-only target)."""
    pix = cell_centers_torch(h, w, stride, T_c2w.device, T_c2w.dtype).reshape(1, -1, 2)
    fx, fy, cx, cy = K[:, 0, 0, None], K[:, 1, 1, None], K[:, 0, 2, None], K[:, 1, 2, None]
    x = (pix[..., 0] - cx) / fx * depth
    y = (pix[..., 1] - cy) / fy * depth
    cam = torch.stack([x, y, torch.full_like(x, depth)], -1)
    world = transform_points_torch(T_c2w, cam)
    return world.reshape(-1, h, w, 3).permute(0, 3, 1, 2)


@dataclass
class InitLossConfig:
    """DSAC*'s initialisation loss settings (names and defaults as DSAC*'s train_init.py)."""

    mode: int = 1               # 0: RGB only, 1: RGB + 3D targets, 2: RGB-D (3D distance only)
    softclamp: float = 100.0    # px: L1 below, sqrt(softclamp * e) above
    hardclamp: float = 1000.0   # px: reprojection errors above are invalid
    mindepth: float = 0.1       # m: predictions closer / behind the camera are invalid
    inittolerance: float = 0.1  # m: predictions farther than this from a known target are invalid
    targetdepth: float = 10.0   # m: depth of the heuristic target in mode 0
    stride: int = 8


def scr_init_loss(coords: torch.Tensor, T_c2w: torch.Tensor, K: torch.Tensor,
                  target: Optional[torch.Tensor], target_mask: Optional[torch.Tensor],
                  cfg: InitLossConfig) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """DSAC*'s initialisation loss for scene-coordinate regression.

    Mode 2: mean 3D distance to the targets on labelled cells. Modes 0/1: a soft-clamped
    reprojection error on *valid* cells (in front of the camera by ``mindepth``, reprojection error
    below ``hardclamp``, within ``inittolerance`` of a known target), and the 3D distance to the
    target on the other cells that have one (mode 0 uses a heuristic target at ``targetdepth`` for
    every cell); the sum is divided by the number of cells.

    Args:
        coords: ``(B, 3, h, w)`` predictions.
        T_c2w, K: ``(B, 4, 4)``, ``(B, 3, 3)``.
        target: ``(B, 3, h, w)`` ground-truth coordinates (ignored in mode 0), ``target_mask``
            ``(B, h, w)`` bool, True where the target is known.

    Returns:
        ``(loss, stats)`` with ``stats["valid"]`` the fraction of cells under the reprojection term
        and ``stats["coord_error"]`` the median 3D error on labelled cells (metres, no gradient).
    """
    B, _, h, w = coords.shape
    stats: Dict[str, torch.Tensor] = {}
    if cfg.mode == 0:
        target = constant_depth_target(T_c2w, K, h, w, cfg.targetdepth, cfg.stride).to(coords.dtype)
        target_mask = torch.ones(B, h, w, dtype=torch.bool, device=coords.device)
    elif target is None or target_mask is None:
        raise ValueError(f"mode {cfg.mode} needs coordinate targets (depth or init/ maps)")
    dist = (coords - target).norm(dim=1)  # (B, h, w)
    if target_mask.any():
        stats["coord_error"] = dist.detach()[target_mask].median()
    if cfg.mode == 2:
        loss = dist[target_mask].mean() if target_mask.any() else coords.sum() * 0
        stats["valid"] = target_mask.float().mean()
        return loss, stats
    err, depth = reprojection_errors(coords, T_c2w, K, cfg.stride)
    valid = (depth >= cfg.mindepth) & (err <= cfg.hardclamp) & ~(target_mask & (dist > cfg.inittolerance))
    total = coords.new_zeros(())
    if valid.any():
        e = err[valid]
        total = total + torch.where(e <= cfg.softclamp, e, torch.sqrt(cfg.softclamp * e.clamp_min(1e-12))).sum()
    fallback = target_mask & ~valid
    if fallback.any():
        total = total + dist[fallback].sum()
    stats["valid"] = valid.float().mean()
    return total / (B * h * w), stats


def uncertainty_nll(coords: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood of isotropic 3D errors, mean over labelled cells.

    ``NLL = 3 ln(sigma) + |x - x_gt|^2 / (2 sigma^2)`` (constant terms dropped).

    Args:
        coords: ``(B, 3, h, w)`` predictions; sigma: ``(B, 1, h, w)`` > 0; target ``(B, 3, h, w)``;
        mask: ``(B, h, w)`` bool, labelled cells.
    """
    sq = ((coords - target) ** 2).sum(dim=1)
    s = sigma[:, 0]
    nll = 3.0 * torch.log(s) + sq / (2.0 * s * s)
    if not mask.any():
        return sigma.sum() * 0
    return nll[mask].mean()
