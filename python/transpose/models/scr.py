"""Scene-coordinate regression network (DSAC*-style, fully convolutional, output stride 8).

Input: a grayscale image ``(B, 1, H, W)`` normalised with :data:`IMAGE_MEAN` / :data:`IMAGE_STD`.
Output: scene coordinates ``(B, 3, H/8, W/8)`` in metres (world frame), offset by the scene centre
stored in the network, and, with ``uncertainty=True``, a per-cell standard deviation
``sigma (B, 1, H/8, W/8) > 0`` in metres (``exp`` of a clamped activation, as KFNet and CrossLoc),
from a small head on the detached features of the coordinate head.

The network is split into :meth:`SCRNet.encode` (stride-8 features, used by the sim-to-real
contrastive head and mid-level fusion) and :meth:`SCRNet.decode` (the regression head).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

#: Grayscale normalisation applied by the data pipeline (DSAC*'s values).
IMAGE_MEAN = 0.4
IMAGE_STD = 0.25
#: Output stride of the network: one prediction per 8x8 pixel cell.
STRIDE = 8
#: ln(sigma) is clamped to this range (metres): 2.5 mm to 20 m.
LOG_SIGMA_RANGE = (-6.0, 3.0)


#: Normalisation after each convolution: 'group' (GroupNorm, 8 groups) or 'none' (DSAC*'s network).
NORMS = ("group", "none")


def _zero_conv(cin: int, cout: int) -> nn.Conv2d:
    """A 1x1 convolution that starts at zero: a term added to an output leaves it unchanged until trained."""
    conv = nn.Conv2d(cin, cout, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _conv(cin: int, cout: int, k: int, stride: int = 1, norm: str = "none") -> nn.Module:
    """A convolution, followed by GroupNorm when ``norm == 'group'``.

    GroupNorm (not BatchNorm): SCR trains on one image per step, where BatchNorm's running
    statistics differ badly between training and testing; GroupNorm behaves the same in both and
    makes the plain DSAC* network converge about ten times faster on a CPU budget.
    """
    conv = nn.Conv2d(cin, cout, k, stride, k // 2)
    if norm == "none":
        return conv
    if norm == "group":
        return nn.Sequential(conv, nn.GroupNorm(8 if cout % 8 == 0 else 1, cout))
    raise ValueError(f"norm must be one of {NORMS}, got '{norm}'")


class ResidualBlock(nn.Module):
    """Three convolutions with a skip (1x1 projection when the width changes)."""

    def __init__(self, cin: int, cout: int, kernels: Sequence[int] = (3, 1, 3), norm: str = "none"):
        super().__init__()
        self.conv1 = _conv(cin, cout, kernels[0], norm=norm)
        self.conv2 = _conv(cout, cout, kernels[1], norm=norm)
        self.conv3 = _conv(cout, cout, kernels[2], norm=norm)
        self.skip = _conv(cin, cout, 1, norm=norm) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        y = F.relu(self.conv2(y))
        y = F.relu(self.conv3(y))
        return (self.skip(x) if self.skip is not None else x) + y


class SCRNet(nn.Module):
    """DSAC*-style coordinate regressor.

    Args:
        scene_center: ``(3,)`` added to the raw output so the network regresses offsets from the
            scene's centre (the mean of the training camera positions, as DSAC*).
        width: channel multiplier; 1.0 is DSAC*'s full network (32..512 channels), 0.5 its tiny
            variant, smaller values fit CPU demos.
        uncertainty: add a fourth output channel giving sigma per cell.
        in_channels: 1 for grayscale images (other values for depth/normal inputs).
        norm: ``'group'`` (GroupNorm after every convolution but the last; default) or ``'none'``
            (exactly DSAC*'s layers).
        num_clusters: 0 for DSAC*'s direct regression; K > 0 for a classification head: each cell
            predicts which of K scene-point clusters it sees (logits) and an offset from that
            cluster's centre, coordinates = centre[argmax] + offset. It learns a scene from scratch
            far faster on a CPU budget (measured on 45 frames after 2500 iterations: 0.10 m median
            coordinate error with K = 1024 against ~2.5 m for regression). The centres are a buffer
            set by the trainer (k-means of the training targets).
        sigma_confidence: with clusters and uncertainty, ln(sigma) also gets a learned linear term
            in two statistics of the (detached) cluster distribution: ln(1 - p_max) and its entropy.
            A cell whose cluster is uncertain is far more often wrong by metres than the trunk
            features alone let the sigma head tell in a short training (measured on the demo's
            test frames: Spearman(sigma, error) 0.28 from the head alone, 0.56 for 1 - p_max).
            Default: on for new cluster networks with uncertainty; off for checkpoints saved before it.

    A cluster network can also carry a *readout* (:meth:`set_readout`, fitted in closed form after
    training by :func:`transpose.train.readout.fit_cluster_readout`): per cluster, a linear map from
    the head's features (projected on ``d`` standardised principal components) to the offset from
    the centre, which then replaces the offset head. It lives in buffers, so checkpoints carry it.
    """

    def __init__(self, scene_center: Optional[Sequence[float]] = None, width: float = 1.0,
                 uncertainty: bool = False, in_channels: int = 1, norm: str = "group", num_clusters: int = 0,
                 sigma_confidence: Optional[bool] = None):
        super().__init__()
        c = [max(8, int(round(w * width))) for w in (32, 64, 128, 256, 512)]
        self.width = width
        self.uncertainty = uncertainty
        self.norm = norm
        self.conv1 = _conv(in_channels, c[0], 3, norm=norm)
        self.conv2 = _conv(c[0], c[1], 3, 2, norm=norm)
        self.conv3 = _conv(c[1], c[2], 3, 2, norm=norm)
        self.conv4 = _conv(c[2], c[3], 3, 2, norm=norm)
        self.res1 = ResidualBlock(c[3], c[3], norm=norm)
        self.res2 = ResidualBlock(c[3], c[4], norm=norm)
        self.res3 = ResidualBlock(c[4], c[4], kernels=(1, 1, 1), norm=norm)
        self.fc1 = _conv(c[4], c[4], 1, norm=norm)
        self.fc2 = _conv(c[4], c[4], 1, norm=norm)
        self.num_clusters = int(num_clusters)
        self.fc3 = nn.Conv2d(c[4], 3 + self.num_clusters, 1)
        if self.num_clusters:
            self.register_buffer("cluster_centers", torch.zeros(self.num_clusters, 3))
        # sigma has its own head on *detached* trunk features: the NLL then calibrates sigma
        # without its 1/sigma^2-weighted gradients slowing the coordinate regression (measured:
        # 1.5 cm vs 24 cm coordinate error after 400 iterations when the NLL reached the trunk)
        self.sigma_head = nn.Sequential(_conv(c[4], c[4] // 2, 1, norm=norm), nn.ReLU(),
                                        nn.Conv2d(c[4] // 2, 1, 1)) if uncertainty else None
        if sigma_confidence is None:
            sigma_confidence = bool(self.num_clusters and uncertainty)
        if sigma_confidence and not (self.num_clusters and uncertainty):
            raise ValueError("sigma_confidence needs num_clusters > 0 and uncertainty=True")
        self.sigma_confidence = _zero_conv(2, 1) if sigma_confidence else None
        self.feature_channels = c[3]
        self.in_channels = in_channels
        center = torch.zeros(3) if scene_center is None else torch.as_tensor(scene_center, dtype=torch.float32)
        self.register_buffer("scene_center", center.reshape(3).clone())
        self.clear_readout()

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Stride-8 features ``(B, C, H/8, W/8)`` of a normalised image ``(B, 1, H, W)``."""
        x = F.relu(self.conv1(image))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        return self.res1(x)

    def head_features(self, features: torch.Tensor) -> torch.Tensor:
        """The last features ``(B, C, h, w)`` before the output layer (what the readout reads)."""
        x = self.res3(self.res2(features))
        x = F.relu(self.fc1(x))
        return F.relu(self.fc2(x))

    def decode(self, features: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Coordinates ``(B, 3, h, w)`` and sigma ``(B, 1, h, w)`` (None without uncertainty)."""
        x = self.head_features(features)
        out = self.fc3(x)
        logits, offsets = out[:, 3:], out[:, :3]
        sigma = None
        if self.sigma_head is not None:
            log_sigma = self.sigma_head(x.detach())
            if self.sigma_confidence is not None:
                log_sigma = log_sigma + self.sigma_confidence(cluster_confidence(logits.detach()))
            sigma = torch.exp(log_sigma.clamp(*LOG_SIGMA_RANGE))
        if self.num_clusters:
            self._last_logits, self._last_offsets = logits, offsets  # read by the training loss
            labels = logits.argmax(dim=1)
            if self.has_readout:
                offsets = self.readout_offsets(x, labels)
            return self.cluster_centers[labels].permute(0, 3, 1, 2) + offsets, sigma
        return out + self.scene_center.view(1, 3, 1, 1), sigma

    # ------------------------------------------------------------------ readout (cluster networks)

    @property
    def has_readout(self) -> bool:
        return self.readout_weights is not None

    def set_readout(self, mean: torch.Tensor, basis: torch.Tensor, weights: torch.Tensor) -> None:
        """Install a fitted readout: feature ``mean (C,)``, projection ``basis (C, d)`` and per-cluster
        weights ``(K, d + 1, 3)`` (the last row is the bias): offset = [(x - mean) basis, 1] weights[k]."""
        C, K = self.fc3.in_channels, self.num_clusters
        if not K:
            raise ValueError("a readout needs a cluster network (num_clusters > 0)")
        d = basis.shape[-1]
        if mean.shape != (C,) or basis.shape != (C, d) or weights.shape != (K, d + 1, 3):
            raise ValueError(f"readout shapes: expected mean ({C},), basis ({C}, d), weights ({K}, d + 1, 3); got "
                             f"{tuple(mean.shape)}, {tuple(basis.shape)}, {tuple(weights.shape)}")
        device = self.cluster_centers.device
        self.readout_mean = mean.detach().float().to(device).clone()
        self.readout_basis = basis.detach().float().to(device).clone()
        self.readout_weights = weights.detach().float().to(device).clone()

    def clear_readout(self) -> None:
        """Drop the readout (coordinates come from the offset head again), e.g. before fine-tuning,
        which changes the features it was fitted to."""
        for name in ("readout_mean", "readout_basis", "readout_weights"):
            self.register_buffer(name, None)

    def readout_offsets(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Offsets ``(B, 3, h, w)`` of the readout for head features ``x (B, C, h, w)`` and cluster
        ``labels (B, h, w)``."""
        z = torch.einsum("bchw,cd->bhwd", x - self.readout_mean.view(1, -1, 1, 1), self.readout_basis)
        w = self.readout_weights[labels]                                   # (B, h, w, d + 1, 3)
        return (torch.einsum("bhwd,bhwdk->bkhw", z, w[..., :-1, :]) + w[..., -1, :].permute(0, 3, 1, 2))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a state dict with a readout brings its shapes: make the buffers before torch copies into them
        if prefix + "readout_weights" in state_dict:
            self.set_readout(*(state_dict[prefix + n] for n in ("readout_mean", "readout_basis", "readout_weights")))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def cluster_outputs(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, K, h, w), offsets (B, 3, h, w))`` of the last forward pass (classification head)."""
        return self._last_logits, self._last_offsets

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(coords (B, 3, H/8, W/8), sigma (B, 1, H/8, W/8) or None)`` for images ``(B, 1, H, W)``."""
        if image.dim() != 4:
            raise ValueError(f"SCRNet expects images (B, C, H, W), got shape {tuple(image.shape)}")
        return self.decode(self.encode(image))

    def add_sigma_confidence(self) -> bool:
        """Give a cluster network with uncertainty that lacks it (saved before it existed) the
        sigma_confidence term, at zero so that every output stays as it was until training moves
        it; returns whether it was added."""
        if self.sigma_confidence is not None or not (self.num_clusters and self.uncertainty):
            return False
        self.sigma_confidence = _zero_conv(2, 1).to(self.fc3.weight.device)
        return True

    def options(self) -> dict:
        """Everything needed to rebuild this network (stored in checkpoints)."""
        return {"width": self.width, "uncertainty": self.uncertainty,
                "scene_center": [float(v) for v in self.scene_center],
                "in_channels": self.in_channels, "norm": self.norm, "num_clusters": self.num_clusters,
                "sigma_confidence": self.sigma_confidence is not None,
                "readout_dim": int(self.readout_basis.shape[1]) if self.has_readout else 0}

    @classmethod
    def from_options(cls, options: dict) -> "SCRNet":
        return cls(scene_center=options.get("scene_center"), width=options.get("width", 1.0),
                   uncertainty=options.get("uncertainty", False), in_channels=options.get("in_channels", 1),
                   norm=options.get("norm", "group"), num_clusters=options.get("num_clusters", 0),
                   sigma_confidence=options.get("sigma_confidence", False))


def cluster_confidence(logits: torch.Tensor) -> torch.Tensor:
    """``(B, 2, h, w)``: ln(1 - p_max) and the entropy (nats) of the cluster distribution
    ``softmax(logits (B, K, h, w))`` per cell; both grow as the classification grows unsure."""
    log_p = F.log_softmax(logits, dim=1)
    # ln(1 - p_max) as the log of the other clusters' mass: exact when p_max is close to 1
    top = F.one_hot(logits.argmax(dim=1), logits.shape[1]).permute(0, 3, 1, 2).bool()
    log_rest = torch.logsumexp(log_p.masked_fill(top, float("-inf")), dim=1, keepdim=True).clamp_min(-30.0)
    p = log_p.exp()
    entropy = -(p * log_p).sum(dim=1, keepdim=True)
    return torch.cat([log_rest, entropy], dim=1)


def output_size(height: int, width: int) -> Tuple[int, int]:
    """Prediction grid ``(h, w)`` for an image ``(height, width)``: three stride-2 convs with padding 1."""
    for _ in range(3):
        height, width = (height + 1) // 2, (width + 1) // 2
    return height, width
