"""Losses and error measures for absolute pose regression (APR).

An APR network predicts the camera centre ``position (B, 3)`` in metres and the camera-to-world
rotation as a quaternion ``(B, 4)`` (w, x, y, z; not necessarily unit norm). Targets are unit
quaternions with ``w >= 0`` (as :mod:`transpose.data.apr` returns them).

- :func:`position_loss`, :func:`orientation_loss`: batch means of ``|x - x_gt|_p`` and
  ``|q / |q| - q_gt|_p`` (PoseNet, MS-Transformer; ``p = 2`` by default).
- :class:`FixedWeightPoseLoss`: ``L = L_x + beta L_q`` (PoseNet, Kendall et al. 2015).
- :class:`LearnedWeightPoseLoss`: ``L = exp(-s_x) L_x + s_x + exp(-s_q) L_q + s_q`` with learned
  homoscedastic weights (Kendall & Cipolla 2017; MS-Transformer; initial ``s_x = 0, s_q = -3``).
- :func:`scene_nll_loss`: negative log-likelihood of the true scene (MS-Transformer).
- :func:`apr_loss`: one call for a model's output dict: main pose loss, GoogLeNet auxiliary
  pose losses (weights 0.3, 0.3, 1.0) and the scene loss when the model classifies scenes.
- :func:`apr_pose_errors`, :func:`apr_pose_matrix`: metrics in metres / degrees and 4x4 poses.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .geometry import quat_angle_deg_torch, quat_to_rotmat_torch

__all__ = [
    "position_loss", "orientation_loss", "FixedWeightPoseLoss", "LearnedWeightPoseLoss",
    "build_pose_criterion", "scene_nll_loss", "apr_loss", "apr_pose_errors", "apr_pose_matrix",
    "POSENET_AUX_WEIGHTS",
]

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
