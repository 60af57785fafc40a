"""TransPose heads: the contrastive projection head (NCE), mid-level task regressors and their fusion (MLR).

- :class:`ProjectionHead`: stride-8 features ``(B, C, h, w)`` -> global average pool -> two-layer
  MLP -> L2-normalized embedding ``(B, D)`` for the supervised contrastive loss;
  :class:`DenseProjectionHead`: the same per cell (1x1 convolutions), ``(B, D, h, w)``, for the
  dense term that pulls together cells of different frames seeing the same scene point.
- :class:`TaskNet`: a depth or surface-normal regressor with per-cell uncertainty, on the same
  encoder as :class:`~transpose.models.scr.SCRNet` (so its features have the coordinate
  network's shape). Depth is in metres, normals are unit vectors in the *camera* frame (a
  mid-level cue that does not depend on where the camera is); the uncertainty is the scale ``b``
  of a Laplace distribution (metres, radians).
- :class:`MLRFusion`: fuses the coordinate encoder's features with frozen task encoders' features:
  each input normalized (GroupNorm with one group, no affine: the frozen features keep their own
  scale), concatenated, a 3x3 + 1x1 conv block, added to the coordinate features (skip). The last
  convolution starts at zero, so an untrained fusion is the identity.
- :class:`TransposeNet`: an SCRNet with optional frozen task encoders + fusion (MLR) and an optional
  projection head (NCE); ``forward(image)`` returns ``(coords, sigma)`` exactly as SCRNet does.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .scr import LOG_SIGMA_RANGE, ResidualBlock, SCRNet, _conv, _zero_conv

__all__ = ["ProjectionHead", "DenseProjectionHead", "TaskNet", "MLRFusion", "TransposeNet", "TASKS", "task_names"]

#: Mid-level tasks and their output channels.
TASKS = {"depth": 1, "normal": 3}


class ProjectionHead(nn.Module):
    """Global-pooled, L2-normalized projection of stride-8 features.

    Args:
        in_channels: feature channels C; hidden: MLP width; out_dim: embedding size D.
    """

    def __init__(self, in_channels: int, hidden: int = 256, out_dim: int = 128):
        super().__init__()
        self.in_channels, self.hidden, self.out_dim = in_channels, hidden, out_dim
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> unit vectors ``(B, D)``."""
        pooled = features.mean(dim=(2, 3))
        return F.normalize(self.fc2(F.relu(self.fc1(pooled))), dim=1)

    def options(self) -> dict:
        return {"in_channels": self.in_channels, "hidden": self.hidden, "out_dim": self.out_dim}


class DenseProjectionHead(nn.Module):
    """Per-cell, L2-normalized projection of stride-8 features (the dense NCE term).

    Args:
        in_channels: feature channels C; hidden: width of the 1x1-conv MLP; out_dim: embedding size D.
    """

    def __init__(self, in_channels: int, hidden: int = 128, out_dim: int = 64):
        super().__init__()
        self.in_channels, self.hidden, self.out_dim = in_channels, hidden, out_dim
        self.conv1 = nn.Conv2d(in_channels, hidden, 1)
        self.conv2 = nn.Conv2d(hidden, out_dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> unit vectors ``(B, D, h, w)``."""
        return F.normalize(self.conv2(F.relu(self.conv1(features))), dim=1)

    def options(self) -> dict:
        return {"in_channels": self.in_channels, "hidden": self.hidden, "out_dim": self.out_dim}


class TaskNet(nn.Module):
    """Depth or camera-frame normal regressor with Laplace uncertainty (TransPose-MLR's task networks).

    The encoder has SCRNet's layers (``conv1..conv4``, ``res1``), so :meth:`encode` returns features
    ``(B, C, H/8, W/8)`` with ``C = SCRNet(width=width).feature_channels``.

    Args:
        task: ``'depth'`` or ``'normal'``; width, norm, in_channels: as :class:`SCRNet`.
    """

    def __init__(self, task: str, width: float = 1.0, norm: str = "group", in_channels: int = 1):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got '{task}'")
        c = [max(8, int(round(w * width))) for w in (32, 64, 128, 256, 512)]
        self.task, self.width, self.norm, self.in_channels = task, width, norm, in_channels
        self.conv1 = _conv(in_channels, c[0], 3, norm=norm)
        self.conv2 = _conv(c[0], c[1], 3, 2, norm=norm)
        self.conv3 = _conv(c[1], c[2], 3, 2, norm=norm)
        self.conv4 = _conv(c[2], c[3], 3, 2, norm=norm)
        self.res1 = ResidualBlock(c[3], c[3], norm=norm)
        self.res2 = ResidualBlock(c[3], c[3], norm=norm)
        self.out = nn.Conv2d(c[3], TASKS[task], 1)
        # the scale sees detached features (as SCRNet's sigma head): calibration does not slow the task
        self.scale_head = nn.Sequential(_conv(c[3], c[3] // 2, 1, norm=norm), nn.ReLU(), nn.Conv2d(c[3] // 2, 1, 1))
        self.feature_channels = c[3]

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Stride-8 features ``(B, C, H/8, W/8)`` of a normalized image ``(B, 1, H, W)``."""
        x = F.relu(self.conv1(image))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        return self.res1(x)

    def decode(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(prediction, scale)``: depth ``(B, 1, h, w)`` metres (> 0) or unit normals ``(B, 3, h, w)``;
        scale ``(B, 1, h, w)`` > 0 (metres for depth, radians for normals)."""
        x = self.res2(features)
        raw = self.out(x)
        pred = torch.exp(raw.clamp(-5.0, 6.0)) if self.task == "depth" else F.normalize(raw, dim=1)
        scale = torch.exp(self.scale_head(x.detach()).clamp(*LOG_SIGMA_RANGE))
        return pred, scale

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.decode(self.encode(image))

    def options(self) -> dict:
        return {"task": self.task, "width": self.width, "norm": self.norm, "in_channels": self.in_channels}

    @classmethod
    def from_options(cls, options: dict) -> "TaskNet":
        return cls(options["task"], width=options.get("width", 1.0), norm=options.get("norm", "group"),
                   in_channels=options.get("in_channels", 1))


class MLRFusion(nn.Module):
    """Fuse coordinate features ``(B, C, h, w)`` with task features ``[(B, C_k, h, w)]`` (normalization,
    conv block, skip); the output has the coordinate features' shape."""

    def __init__(self, channels: int, task_channels: Sequence[int], norm: str = "group"):
        super().__init__()
        self.channels, self.task_channels = channels, list(task_channels)
        self.norms = nn.ModuleList([nn.GroupNorm(1, c, affine=False) for c in [channels] + self.task_channels])
        self.conv1 = _conv(channels + sum(self.task_channels), channels, 3, norm=norm)
        self.conv2 = _zero_conv(channels, channels)  # an untrained fusion is the identity

    def forward(self, features: torch.Tensor, task_features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(task_features) != len(self.task_channels):
            raise ValueError(f"MLRFusion expects {len(self.task_channels)} task feature maps, got {len(task_features)}")
        parts = [norm(x) for norm, x in zip(self.norms, [features] + list(task_features))]
        return features + self.conv2(F.relu(self.conv1(torch.cat(parts, dim=1))))


class TransposeNet(nn.Module):
    """SCRNet + optional frozen task encoders with fusion (MLR) + optional projection head (NCE).

    Args:
        scr: the coordinate network.
        tasks: frozen task networks by name (their encoders feed the fusion); their weights are part
            of this module's state, so a checkpoint is self-contained.
        head_dim: embedding size of the projection head (0: no head).
        dense_dim: embedding size of the per-cell projection head (0: none).
    """

    def __init__(self, scr: SCRNet, tasks: Optional[Dict[str, TaskNet]] = None, head_dim: int = 0,
                 head_hidden: int = 256, dense_dim: int = 0, dense_hidden: int = 128):
        super().__init__()
        self.scr = scr
        self.tasks = nn.ModuleDict(tasks or {})
        for net in self.tasks.values():
            for p in net.parameters():
                p.requires_grad_(False)
            net.eval()
        self.fusion = (MLRFusion(scr.feature_channels, [t.feature_channels for t in self.tasks.values()], scr.norm)
                       if self.tasks else None)
        self.head = ProjectionHead(scr.feature_channels, head_hidden, head_dim) if head_dim > 0 else None
        self.dense_head = (DenseProjectionHead(scr.feature_channels, dense_hidden, dense_dim)
                           if dense_dim > 0 else None)
        self.uncertainty = scr.uncertainty

    @property
    def scene_center(self) -> torch.Tensor:
        return self.scr.scene_center

    def train(self, mode: bool = True) -> "TransposeNet":
        super().train(mode)
        for net in self.tasks.values():  # frozen: GroupNorm has no running stats, but keep them in eval anyway
            net.eval()
        return self

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Features the coordinate head decodes: SCRNet's, fused with the task encoders' when MLR is on."""
        features = self.scr.encode(image)
        if self.fusion is None:
            return features
        with torch.no_grad():
            task_features = [net.encode(image) for net in self.tasks.values()]
        return self.fusion(features, task_features)

    def decode(self, features: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.scr.decode(features)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Contrastive embedding ``(B, D)`` of features from :meth:`encode`."""
        if self.head is None:
            raise ValueError("this network has no projection head (built with head_dim=0)")
        return self.head(features)

    def embed_cells(self, features: torch.Tensor) -> torch.Tensor:
        """Per-cell contrastive embedding ``(B, D, h, w)`` of features from :meth:`encode`."""
        if self.dense_head is None:
            raise ValueError("this network has no dense projection head (built with dense_dim=0)")
        return self.dense_head(features)

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if image.dim() != 4:
            raise ValueError(f"TransposeNet expects images (B, C, H, W), got shape {tuple(image.shape)}")
        return self.decode(self.encode(image))

    def options(self) -> dict:
        """SCRNet's options plus a ``transpose`` entry describing the tasks and the head."""
        return {**self.scr.options(),
                "transpose": {"tasks": {name: net.options() for name, net in self.tasks.items()},
                              "head": self.head.options() if self.head is not None else None,
                              "dense_head": self.dense_head.options() if self.dense_head is not None else None}}

    @classmethod
    def from_options(cls, options: dict) -> "TransposeNet":
        extra = options.get("transpose") or {}
        tasks = {name: TaskNet.from_options(o) for name, o in (extra.get("tasks") or {}).items()}
        head, dense = extra.get("head"), extra.get("dense_head")
        return cls(SCRNet.from_options(options), tasks, head_dim=head["out_dim"] if head else 0,
                   head_hidden=head["hidden"] if head else 256, dense_dim=dense["out_dim"] if dense else 0,
                   dense_hidden=dense["hidden"] if dense else 128)


def task_names(spec: str) -> List[str]:
    """``'depth,normal'`` -> ``['depth', 'normal']``; ValueError naming ``--mlr`` for unknown tasks."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in TASKS]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"--mlr: expected a comma-separated subset of {', '.join(TASKS)}, got '{spec}'")
    return names
