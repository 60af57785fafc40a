"""PoseNet (Kendall et al. 2015) and Bayesian PoseNet (Kendall & Cipolla 2016).

The pooled backbone feature goes through a 2048-d fully connected layer (ReLU, dropout) and two
affine heads: ``position (B, 3)`` (camera centre, metres) and ``quaternion (B, 4)`` (w, x, y, z of
the camera-to-world rotation; normalize before use). On GoogLeNet the two auxiliary ImageNet
classifiers become pose regressors (pool 4x4, 1x1 conv 128, fc 1024 + ReLU, dropout 0.7, then
position and quaternion layers) and are evaluated in train mode only; weight their losses
0.3, 0.3, 1.0 (:func:`transpose.losses.apr_loss`).

Bayesian PoseNet keeps dropout active at test time (Monte Carlo dropout): :func:`mc_dropout_predict`
runs N stochastic passes and reports the mean position, the mean rotation (eigenvector
quaternion average, :func:`transpose.geometry.average_quaternions_torch`) and per-frame variances.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import average_quaternions_torch as average_quaternions  # re-exported (moved to geometry)
from .backbones import GoogLeNet, load_backbone_weights, resnet34

__all__ = ["PoseHead", "AuxPoseHead", "PoseNet", "average_quaternions", "enable_mc_dropout",
           "mc_dropout_predict"]


class PoseHead(nn.Module):
    """``(B, F)`` -> fc ``hidden_dim`` + ReLU + dropout -> ``position (B, 3)``, ``quaternion (B, 4)``."""

    def __init__(self, in_features: int, hidden_dim: int = 2048, dropout: float = 0.5) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc_position = nn.Linear(hidden_dim, 3)
        self.fc_quaternion = nn.Linear(hidden_dim, 4)
        nn.init.kaiming_normal_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        for layer in (self.fc_position, self.fc_quaternion):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        # start near the identity rotation so the quaternion is well defined from step one
        with torch.no_grad():
            self.fc_quaternion.bias[0] = 1.0

    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.dropout(F.relu(self.fc(features)))
        return {"position": self.fc_position(x), "quaternion": self.fc_quaternion(x)}


class AuxPoseHead(nn.Module):
    """Pose layers of a GoogLeNet auxiliary head (the backbone's aux block gives its 1024-d input).

    Input ``(B, 1024)`` (``InceptionAux.features``) -> ``position (B, 3)``, ``quaternion (B, 4)``.
    """

    def __init__(self, dropout: float = 0.7) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc_position = nn.Linear(1024, 3)
        self.fc_quaternion = nn.Linear(1024, 4)
        for layer in (self.fc_position, self.fc_quaternion):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        with torch.no_grad():
            self.fc_quaternion.bias[0] = 1.0

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.dropout(x)
        return {"position": self.fc_position(x), "quaternion": self.fc_quaternion(x)}


class PoseNet(nn.Module):
    """PoseNet on ``backbone="googlenet"`` (with ``aux_heads``) or ``"resnet34"``.

    ``forward(image (B, 3, H, W))`` -> dict ``position (B, 3)``, ``quaternion (B, 4)`` and, for
    GoogLeNet in train mode with aux heads, ``aux``: ``[aux1, aux2]`` dicts with the same keys.
    The ImageNet classifier layers are removed; load torchvision ImageNet weights with
    :meth:`load_backbone_weights` (it skips the classifier keys).
    ``backbone_width`` narrows ResNet34 for quick experiments (64 = the real network).
    """

    def __init__(self, backbone: str = "googlenet", hidden_dim: int = 2048, dropout: float = 0.5,
                 aux_heads: bool = True, aux_dropout: float = 0.7, backbone_width: int = 64,
                 transform_input: bool = False) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.aux_heads: Optional[nn.ModuleList] = None
        if backbone == "googlenet":
            net = GoogLeNet(aux_logits=aux_heads, transform_input=transform_input)
            net.fc = nn.Identity()
            if aux_heads:
                # the aux blocks become part of the pose heads; their classifiers go
                net.aux1.fc2, net.aux2.fc2 = nn.Identity(), nn.Identity()
                self.aux_heads = nn.ModuleList([AuxPoseHead(aux_dropout), AuxPoseHead(aux_dropout)])
            net.dropout = nn.Identity()  # PoseNet's own dropout sits after its fc layer
        elif backbone == "resnet34":
            net = resnet34(width=backbone_width)
            net.fc = nn.Identity()
        else:
            raise ValueError(f"PoseNet: backbone must be 'googlenet' or 'resnet34', got {backbone!r}")
        self.backbone = net
        self.head = PoseHead(net.num_features, hidden_dim, dropout)

    def load_backbone_weights(self, path: str) -> None:
        """Load torchvision ImageNet weights (``googlenet`` / ``resnet34`` state dict) into the backbone."""
        ignore = ["fc."]
        if self.backbone_name == "googlenet":
            # torchvision's ImageNet GoogLeNet aux heads were never trained (its loader warns
            # about it), so they keep their fresh initialization here
            ignore += ["aux1.", "aux2."]
        load_backbone_weights(self.backbone, path, ignore_prefixes=ignore)

    def forward(self, image: torch.Tensor) -> Dict[str, object]:
        feats = self.backbone.forward_features(image)
        out: Dict[str, object] = dict(self.head(feats["pooled"]))
        if self.aux_heads is not None and self.training:
            out["aux"] = [self.aux_heads[0](self.backbone.aux1.features(feats["aux1"])),
                          self.aux_heads[1](self.backbone.aux2.features(feats["aux2"]))]
        return out


# --------------------------------------------------------------------------- Bayesian PoseNet

def enable_mc_dropout(model: nn.Module) -> None:
    """Eval mode (BatchNorm uses running statistics) with every dropout layer sampling."""
    model.eval()
    for module in model.modules():
        if isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
            module.train()


@torch.no_grad()
def mc_dropout_predict(model: nn.Module, image: torch.Tensor, num_samples: int = 40) -> Dict[str, torch.Tensor]:
    """Monte Carlo dropout prediction (Bayesian PoseNet) for a batch ``(B, 3, H, W)``.

    Returns ``position (B, 3)`` (sample mean), ``quaternion (B, 4)`` (eigenvector average, unit,
    ``w >= 0``), ``position_var (B, 3)`` (per-axis sample variance, m^2), ``position_std (B,)``
    (square root of the trace), ``rotation_var_deg2 (B,)`` (mean squared angle of the samples
    around the mean rotation), and the samples ``position_samples (N, B, 3)``,
    ``quaternion_samples (N, B, 4)``. The model's train/eval state is restored afterwards.
    """
    if num_samples < 2:
        raise ValueError(f"mc_dropout_predict: num_samples must be >= 2, got {num_samples}")
    was_training = {m: m.training for m in model.modules()}
    try:
        enable_mc_dropout(model)
        positions, quats = [], []
        for _ in range(num_samples):
            out = model(image)
            positions.append(out["position"])
            quats.append(F.normalize(out["quaternion"], dim=-1))
    finally:
        for module, mode in was_training.items():
            module.training = mode
    position_samples = torch.stack(positions)  # (N, B, 3)
    quaternion_samples = torch.stack(quats)  # (N, B, 4)
    position = position_samples.mean(0)
    quaternion = average_quaternions(quaternion_samples.transpose(0, 1))  # (B, 4)
    dots = (quaternion_samples * quaternion[None]).sum(-1).abs().clamp(max=1.0)
    angles = torch.rad2deg(2 * torch.acos(dots))  # (N, B)
    position_var = position_samples.var(0, unbiased=True)
    return {
        "position": position, "quaternion": quaternion, "position_var": position_var,
        "position_std": position_var.sum(-1).sqrt(), "rotation_var_deg2": (angles ** 2).mean(0),
        "position_samples": position_samples, "quaternion_samples": quaternion_samples,
    }
