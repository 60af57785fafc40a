"""Losses: scene-coordinate regression (reprojection, coordinates, uncertainty NLL) and absolute
pose regression (position / orientation losses, learned weighting, scene NLL; section "APR losses").

All functions take batched tensors; shapes are given in each docstring. Poses are camera-to-world
``(B, 4, 4)``; intrinsics ``(B, 3, 3)``; coordinate maps ``(B, 3, h, w)`` whose cell ``(i, j)`` sees
pixel ``(stride * j + stride / 2, stride * i + stride / 2)`` (see :mod:`transpose.geometry`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .geometry import (cell_centers_torch, project_torch, quat_angle_deg_torch, quat_to_rotmat_torch,
                       transform_points_torch)


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
    y_n = (pix[..., 1] - cy) / fy
    x = (pix[..., 0] - cx - K[:, 0, 1, None] * y_n) / fx * depth   # undoes a skew K[0, 1]
    y = y_n * depth
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


# --------------------------------------------------------------------------- APR losses
# Losses and error measures for absolute pose regression (APR).
#
# An APR network predicts the camera centre ``position (B, 3)`` in metres and the camera-to-world
# rotation as a quaternion ``(B, 4)`` (w, x, y, z; not necessarily unit norm). Targets are unit
# quaternions with ``w >= 0`` (as :mod:`transpose.data.apr` returns them).
#
# - :func:`position_loss`, :func:`orientation_loss`: batch means of ``|x - x_gt|_p`` and
#   ``|q / |q| - q_gt|_p`` (PoseNet, MS-Transformer; ``p = 2`` by default).
# - :class:`FixedWeightPoseLoss`: ``L = L_x + beta L_q`` (PoseNet, Kendall et al. 2015).
# - :class:`LearnedWeightPoseLoss`: ``L = exp(-s_x) L_x + s_x + exp(-s_q) L_q + s_q`` with learned
#   homoscedastic weights (Kendall & Cipolla 2017; MS-Transformer; initial ``s_x = 0, s_q = -3``).
# - :func:`scene_nll_loss`: negative log-likelihood of the true scene (MS-Transformer).
# - :func:`apr_loss`: one call for a model's output dict: main pose loss, GoogLeNet auxiliary
#   pose losses (weights 0.3, 0.3, 1.0) and the scene loss when the model classifies scenes.
# - :func:`apr_pose_errors`, :func:`apr_pose_matrix`: metrics in metres / degrees and 4x4 poses.

#: weights of GoogLeNet PoseNet's (aux1, aux2, main) pose losses (Kendall et al. 2015)
POSENET_AUX_WEIGHTS: Tuple[float, float, float] = (0.3, 0.3, 1.0)


def _check_shapes(pred: torch.Tensor, target: torch.Tensor, dim: int, name: str) -> None:
    if pred.shape != target.shape or pred.dim() != 2 or pred.shape[-1] != dim:
        raise ValueError(f"{name}: expected prediction and target of shape (B, {dim}), "
                         f"got {tuple(pred.shape)} and {tuple(target.shape)}")


def position_loss(pred_position: torch.Tensor, gt_position: torch.Tensor, norm: float = 2) -> torch.Tensor:
    """Mean over the batch of ``|x - x_gt|_norm``; inputs ``(B, 3)``, result a scalar."""
    _check_shapes(pred_position, gt_position, 3, "position_loss")
    return torch.linalg.vector_norm(pred_position - gt_position, ord=norm, dim=1).mean()


def orientation_loss(pred_quaternion: torch.Tensor, gt_quaternion: torch.Tensor, norm: float = 2,
                     sign_invariant: bool = False) -> torch.Tensor:
    """Mean over the batch of ``|q / |q| - q_gt / |q_gt||_norm``; inputs ``(B, 4)``, result a scalar.

    ``sign_invariant=True`` takes ``min(|q - q_gt|, |q + q_gt|)`` (q and -q are the same
    rotation); the published models use the plain distance with targets in the ``w >= 0``
    hemisphere, which is the default.
    """
    _check_shapes(pred_quaternion, gt_quaternion, 4, "orientation_loss")
    q = F.normalize(pred_quaternion, p=2, dim=1, eps=1e-12)
    g = F.normalize(gt_quaternion, p=2, dim=1, eps=1e-12)
    dist = torch.linalg.vector_norm(q - g, ord=norm, dim=1)
    if sign_invariant:
        dist = torch.minimum(dist, torch.linalg.vector_norm(q + g, ord=norm, dim=1))
    return dist.mean()


class FixedWeightPoseLoss(nn.Module):
    """``L = L_x + beta * L_q`` (PoseNet's fixed weighting; beta ~ 250-2000 outdoors, ~ 120-750 indoors)."""

    def __init__(self, beta: float = 500.0, norm: float = 2, sign_invariant: bool = False) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"FixedWeightPoseLoss: beta must be >= 0, got {beta}")
        self.beta = float(beta)
        self.norm = norm
        self.sign_invariant = sign_invariant

    def forward(self, pred_position: torch.Tensor, pred_quaternion: torch.Tensor,
                gt_position: torch.Tensor, gt_quaternion: torch.Tensor) -> torch.Tensor:
        """Scalar loss from ``(B, 3)`` positions and ``(B, 4)`` quaternions."""
        l_x = position_loss(pred_position, gt_position, self.norm)
        l_q = orientation_loss(pred_quaternion, gt_quaternion, self.norm, self.sign_invariant)
        return l_x + self.beta * l_q


class LearnedWeightPoseLoss(nn.Module):
    """``L = exp(-s_x) L_x + s_x + exp(-s_q) L_q + s_q`` with learnable ``s_x``, ``s_q``.

    Put the loss's parameters in the optimizer together with the model's. ``learnable=False``
    freezes ``s_x``, ``s_q`` at their initial values (same formula).
    """

    def __init__(self, s_x: float = 0.0, s_q: float = -3.0, norm: float = 2, learnable: bool = True,
                 sign_invariant: bool = False) -> None:
        super().__init__()
        self.s_x = nn.Parameter(torch.tensor(float(s_x)), requires_grad=learnable)
        self.s_q = nn.Parameter(torch.tensor(float(s_q)), requires_grad=learnable)
        self.norm = norm
        self.sign_invariant = sign_invariant

    def forward(self, pred_position: torch.Tensor, pred_quaternion: torch.Tensor,
                gt_position: torch.Tensor, gt_quaternion: torch.Tensor) -> torch.Tensor:
        """Scalar loss from ``(B, 3)`` positions and ``(B, 4)`` quaternions."""
        l_x = position_loss(pred_position, gt_position, self.norm)
        l_q = orientation_loss(pred_quaternion, gt_quaternion, self.norm, self.sign_invariant)
        return torch.exp(-self.s_x) * l_x + self.s_x + torch.exp(-self.s_q) * l_q + self.s_q


def build_pose_criterion(config: Mapping) -> nn.Module:
    """Pose loss from a config with MS-Transformer's keys (``learnable``, ``s_x``, ``s_q``, ``norm``).

    ``learnable`` true (default): :class:`LearnedWeightPoseLoss`. Otherwise ``beta`` selects
    :class:`FixedWeightPoseLoss`; without ``beta`` the weights stay ``exp(-s_x)``, ``exp(-s_q)``
    (frozen). The original code's frozen branch computed ``s_x L_x + s_q L_q``, which with its
    default ``s_q = -3`` rewards a larger orientation error; that form is not reproduced.
    """
    norm = config.get("norm", 2)
    s_x, s_q = config.get("s_x", 0.0), config.get("s_q", -3.0)
    if config.get("learnable", True):
        return LearnedWeightPoseLoss(s_x, s_q, norm, learnable=True)
    if "beta" in config:
        return FixedWeightPoseLoss(config["beta"], norm)
    return LearnedWeightPoseLoss(s_x, s_q, norm, learnable=False)


def scene_nll_loss(scene_log_probs: torch.Tensor, gt_scene: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the true scenes: log-probabilities ``(B, S)``, ids ``(B,)``."""
    if scene_log_probs.dim() != 2 or gt_scene.shape != scene_log_probs.shape[:1]:
        raise ValueError(f"scene_nll_loss: expected (B, S) and (B,), got {tuple(scene_log_probs.shape)} "
                         f"and {tuple(gt_scene.shape)}")
    return F.nll_loss(scene_log_probs, gt_scene.long())


def apr_loss(outputs: Mapping[str, object], gt_position: torch.Tensor, gt_quaternion: torch.Tensor,
             criterion: nn.Module, gt_scene: Optional[torch.Tensor] = None,
             aux_weights: Sequence[float] = POSENET_AUX_WEIGHTS,
             scene_weight: float = 1.0) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Total training loss of an APR model's output dict and its parts (floats, for logging).

    ``outputs``: ``position (B, 3)``, ``quaternion (B, 4)``, optionally ``aux`` (a list of dicts
    with the same keys, GoogLeNet's aux1 and aux2 heads) and ``scene_log_probs (B, S)``.
    With aux heads the total is ``w1 L(aux1) + w2 L(aux2) + w3 L(main)`` (``aux_weights``);
    with scene log-probabilities and ``gt_scene`` the NLL of the scene is added (times
    ``scene_weight``).
    """
    main = criterion(outputs["position"], outputs["quaternion"], gt_position, gt_quaternion)
    parts: Dict[str, float] = {"pose": float(main.detach())}
    aux = outputs.get("aux") or []
    if aux:
        if len(aux_weights) != len(aux) + 1:
            raise ValueError(f"apr_loss: {len(aux)} aux heads need {len(aux) + 1} aux_weights, got {len(aux_weights)}")
        total = aux_weights[-1] * main
        for index, (head, weight) in enumerate(zip(aux, aux_weights)):
            term = criterion(head["position"], head["quaternion"], gt_position, gt_quaternion)
            parts[f"aux{index + 1}"] = float(term.detach())
            total = total + weight * term
    else:
        total = main
    log_probs = outputs.get("scene_log_probs")
    if log_probs is not None and gt_scene is not None:
        nll = scene_nll_loss(log_probs, gt_scene)
        parts["scene"] = float(nll.detach())
        total = total + scene_weight * nll
    parts["total"] = float(total.detach())
    return total, parts


def apr_pose_errors(pred_position: torch.Tensor, pred_quaternion: torch.Tensor, gt_position: torch.Tensor,
                    gt_quaternion: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(position error in metres (B,), rotation error in degrees (B,))``."""
    _check_shapes(pred_position, gt_position, 3, "apr_pose_errors")
    _check_shapes(pred_quaternion, gt_quaternion, 4, "apr_pose_errors")
    return (pred_position - gt_position).norm(dim=1), quat_angle_deg_torch(pred_quaternion, gt_quaternion)


def apr_pose_matrix(position: torch.Tensor, quaternion: torch.Tensor) -> torch.Tensor:
    """Camera-to-world 4x4 poses ``(B, 4, 4)`` from centres ``(B, 3)`` and quaternions ``(B, 4)``."""
    rotation = quat_to_rotmat_torch(quaternion)
    pose = torch.zeros(position.shape[:-1] + (4, 4), dtype=position.dtype, device=position.device)
    pose[..., :3, :3] = rotation
    pose[..., :3, 3] = position
    pose[..., 3, 3] = 1.0
    return pose


# --------------------------------------------------------------------------- contrastive (TransPose-NCE) and mid-level tasks

def supcon_loss(features: torch.Tensor, labels: Optional[torch.Tensor] = None,
                positive_mask: Optional[torch.Tensor] = None, temperature: float = 0.07,
                ignore_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Supervised contrastive loss (SupCon, Khosla et al. 2020, the ``L_out`` form), mean over anchors.

    For every anchor i with at least one positive,
    ``L_i = -1/|P(i)| sum_{p in P(i)} log(exp(z_i . z_p / t) / sum_{a != i} exp(z_i . z_a / t))``:
    every other sample of the batch is in the denominator, so whatever is not a positive is a
    negative. Anchors without a positive are skipped; a batch without any positive pair gives 0
    (with a gradient path, so the caller's backward still works).

    Args:
        features: ``(M, D)`` embeddings, L2-normalized by the caller (the projection head does it).
        labels: ``(M,)`` ints; samples with equal labels are positives of each other. Or:
        positive_mask: ``(M, M)`` bool, ``[i, j]`` True when j is a positive of anchor i (the
            diagonal is ignored). Give exactly one of ``labels`` and ``positive_mask``.
        temperature: ``t`` (0.07 as the paper). The reference code's extra factor
            ``t / base_t`` is 1 at the default and is not applied.
        ignore_mask: optional ``(M, M)`` bool, ``[i, j]`` True when j is neither a positive nor in
            the denominator of anchor i (pairs that are neither alike nor clearly different).
    """
    if features.dim() != 2:
        raise ValueError(f"features must be (M, D), got shape {tuple(features.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    M = features.shape[0]
    if (labels is None) == (positive_mask is None):
        raise ValueError("give exactly one of labels and positive_mask")
    if labels is not None:
        labels = labels.reshape(-1)
        if labels.numel() != M:
            raise ValueError(f"labels must have {M} entries, got {labels.numel()}")
        positive_mask = labels[:, None] == labels[None, :]
    elif positive_mask.shape != (M, M):
        raise ValueError(f"positive_mask must be ({M}, {M}), got {tuple(positive_mask.shape)}")
    eye = torch.eye(M, dtype=torch.bool, device=features.device)
    excluded = eye
    if ignore_mask is not None:
        if ignore_mask.shape != (M, M):
            raise ValueError(f"ignore_mask must be ({M}, {M}), got {tuple(ignore_mask.shape)}")
        excluded = eye | ignore_mask.to(features.device).bool()
    positives = positive_mask.to(features.device).bool() & ~excluded
    logits = features @ features.T / temperature
    # log-softmax over a != i (logsumexp is stable for small temperatures)
    logits = logits.masked_fill(excluded, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = positives.sum(1)
    has_pos = n_pos > 0
    if not has_pos.any():
        return features.sum() * 0.0
    mean_log_prob_pos = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1)[has_pos] / n_pos[has_pos]
    return -mean_log_prob_pos.mean()


def cell_contrastive_loss(embeddings: torch.Tensor, points: torch.Tensor, valid: torch.Tensor, radius: float,
                          negative_radius: Optional[float] = None, max_cells: int = 1024,
                          temperature: float = 0.07, generator: Optional[torch.Generator] = None,
                          domains: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dense SupCon between cells of different frames that see the same scene point.

    Image-level NCE pulls whole views together; coordinate regression needs the features of one
    *place* to agree across domains, cell by cell. Here a cell's positives are the cells of the other
    frames of the batch whose target scene points lie within ``radius`` of its own; cells farther
    than ``negative_radius`` are its negatives; cells in between, and every other cell of its own
    frame, are left out (a frame's neighbouring cells see nearby points, and the coordinate loss
    already keeps them apart).

    Args:
        embeddings: ``(B, D, h, w)`` unit vectors per cell (a dense projection head's output).
        points: ``(B, 3, h, w)`` target scene coordinates of the cells (metres).
        valid: ``(B, h, w)`` bool, cells with a target.
        radius: positive pairs are closer than this (metres).
        negative_radius: negatives are at least this far apart (default ``2 * radius``).
        max_cells: at most this many valid cells (drawn at random) take part, which bounds the
            ``(M, M)`` similarity matrix.
        temperature: SupCon's ``t``.
        generator: random source of the cell draw (default: torch's global one).
        domains: optional ``(B,)`` domain id per frame (sim / real): then only pairs across domains
            are positives (close pairs within a domain are left out), so the term asks for
            appearance invariance only.

    Returns:
        The mean loss over sampled cells that have a positive (0 with a gradient path when none has).
    """
    if embeddings.dim() != 4 or points.dim() != 4 or points.shape[1] != 3:
        raise ValueError(f"embeddings must be (B, D, h, w) and points (B, 3, h, w), got "
                         f"{tuple(embeddings.shape)} and {tuple(points.shape)}")
    B, D, h, w = embeddings.shape
    if points.shape[0] != B or points.shape[2:] != (h, w) or valid.shape != (B, h, w):
        raise ValueError(f"points {tuple(points.shape)} and valid {tuple(valid.shape)} must match embeddings "
                         f"{tuple(embeddings.shape)} cell for cell")
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    negative_radius = 2.0 * radius if negative_radius is None else negative_radius
    if negative_radius < radius:
        raise ValueError(f"negative_radius ({negative_radius}) must be >= radius ({radius})")
    flat_valid = valid.reshape(-1).to(embeddings.device)
    cells = torch.nonzero(flat_valid).squeeze(1)
    if cells.numel() > max_cells:
        pick = torch.randperm(cells.numel(), generator=generator)[:max_cells].to(cells.device)
        cells = cells[pick]
    z = embeddings.permute(0, 2, 3, 1).reshape(-1, D)[cells]
    x = points.permute(0, 2, 3, 1).reshape(-1, 3)[cells].to(z.device, torch.float32)
    frame = cells // (h * w)
    same_frame = frame[:, None] == frame[None, :]
    dist = torch.cdist(x, x)
    close = dist < radius
    positive = close & ~same_frame
    ignore = same_frame | ((dist >= radius) & (dist < negative_radius))
    if domains is not None:
        if domains.shape != (B,):
            raise ValueError(f"domains must be ({B},), got {tuple(domains.shape)}")
        domain = domains.to(cells.device)[frame]
        same_domain = domain[:, None] == domain[None, :]
        positive = positive & ~same_domain
        ignore = ignore | (close & same_domain)
    return supcon_loss(z, positive_mask=positive, temperature=temperature, ignore_mask=ignore)


def laplace_nll(error: torch.Tensor, scale: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Laplace negative log-likelihood ``|e| / b + ln b`` (constants dropped), mean over ``mask``.

    Used for the mid-level task regressors: depth (``e`` in metres) and surface normals (``e`` the
    angle in radians), ``b > 0`` their predicted uncertainty.

    Args:
        error: ``(B, h, w)``; scale ``(B, h, w)`` > 0; mask ``(B, h, w)`` bool (None: every cell).
    """
    nll = error.abs() / scale + torch.log(scale)
    if mask is None:
        return nll.mean()
    if not mask.any():
        return (error * 0).sum() + (scale * 0).sum()
    return nll[mask].mean()


# --------------------------------------------------------------------------- pose loss (DSAC* end-to-end)

def dsac_pose_loss(T_est_c2w: torch.Tensor, T_gt_c2w: torch.Tensor, weight_rot: float = 1.0,
                   weight_trans: float = 100.0, cut: float = 100.0) -> torch.Tensor:
    """DSAC*'s pose loss per pose ``(...)``: ``weight_rot * degrees + weight_trans * metres``
    (rotation angle and camera-centre distance), soft-clamped to ``sqrt(cut * loss)`` above ``cut``.

    Args:
        T_est_c2w, T_gt_c2w: ``(..., 4, 4)`` camera-to-world poses.

    The native core (:func:`transpose.ransac.dsac_loss`) computes the same loss in C++; this torch
    version is its reference (and usable on any differentiable pose).
    """
    from .geometry import rotation_error_deg_torch

    rot = rotation_error_deg_torch(T_est_c2w[..., :3, :3], T_gt_c2w[..., :3, :3])
    trans = (T_est_c2w[..., :3, 3] - T_gt_c2w[..., :3, 3]).norm(dim=-1)
    raw = weight_rot * rot + weight_trans * trans
    return torch.where(raw > cut, torch.sqrt(cut * raw.clamp_min(cut)), raw)


# --------------------------------------------------------------------------- classification head (SCR)

def nearest_cluster(points: torch.Tensor, centers: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index ``(N,)`` of the centre ``(K, 3)`` nearest to each of ``points (N, 3)`` (the cluster a
    scene point belongs to: the cluster head's label), in chunks of ``chunk`` points."""
    return torch.cat([torch.cdist(c, centers).argmin(dim=1) for c in points.split(chunk)]) if len(points) else \
        torch.zeros(0, dtype=torch.long, device=points.device)


def cluster_loss(logits: torch.Tensor, offsets: torch.Tensor, centers: torch.Tensor, target: torch.Tensor,
                 mask: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Loss of a cluster-classification coordinate head on labelled cells: cross-entropy of the
    cluster nearest to the target, plus the 3D distance of ``center[label] + offset`` to the target.

    Args:
        logits: ``(B, K, h, w)``; offsets: ``(B, 3, h, w)``; centers: ``(K, 3)``;
        target: ``(B, 3, h, w)``; mask: ``(B, h, w)`` bool.
    """
    if not mask.any():
        zero = logits.sum() * 0 + offsets.sum() * 0
        return zero, {"accuracy": zero.detach()}
    tgt = target.permute(0, 2, 3, 1)[mask]                      # (N, 3)
    label = nearest_cluster(tgt, centers)                        # (N,)
    lg = logits.permute(0, 2, 3, 1)[mask]                        # (N, K)
    off = offsets.permute(0, 2, 3, 1)[mask]                      # (N, 3)
    ce = torch.nn.functional.cross_entropy(lg, label)
    dist = (centers[label] + off - tgt).norm(dim=1).mean()
    return ce + dist, {"accuracy": (lg.argmax(dim=1) == label).float().mean().detach()}


def kmeans(points: torch.Tensor, k: int, iterations: int = 20, seed: int = 0) -> torch.Tensor:
    """``k`` cluster centres ``(k, 3)`` of ``points (N, 3)`` by Lloyd's algorithm from a seeded random start."""
    if points.shape[0] < k:
        raise ValueError(f"--clusters {k}: only {points.shape[0]} labelled scene points to cluster")
    g = torch.Generator().manual_seed(seed)
    centers = points[torch.randperm(points.shape[0], generator=g)[:k]].clone()
    for _ in range(iterations):
        assign = nearest_cluster(points, centers)
        sums = torch.zeros_like(centers).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        centers = torch.where(counts > 0, sums / counts.clamp_min(1), centers)
    return centers
