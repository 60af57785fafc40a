"""HyperPose (Ferens & Keller): pose regressors whose weights a hypernetwork generates per image.

Single scene (:class:`HyperPose`): the pooled EfficientNet-B0 feature ``g (B, 1280)`` feeds

- a trained regressor: fc 1024 + ReLU + dropout, then position (3) and quaternion (4) layers;
- per branch (position t, orientation rot) a hypernetwork ``h = swish(fc(proj(g)))`` whose last
  layer outputs the weights and bias ``(dim + 1, out)`` of a linear regressor, applied to a
  second projection of ``g``.

The two regressors' outputs are summed. Multi-scene (:class:`MSHyperPose`): MS-Transformer's
scene-selected decoder outputs replace ``g``'s projections, the hypernetwork input is
``desc + proj(g)`` and it generates a 3-layer MLP (input, hidden, output weights; swish between),
added to MS-Transformer's (shared) MLP heads.

Both return the same dict keys as the other APR models (``position``, ``quaternion``; plus
``scene_log_probs`` and ``scene`` for the multi-scene model).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import EfficientNet
from .mstransformer import MSTransformer

__all__ = ["batched_linear", "HyperRegressor", "HyperPose", "MSHyperPose"]


def batched_linear(x: torch.Tensor, weight_and_bias: torch.Tensor) -> torch.Tensor:
    """Per-sample affine map: ``x (B, Din)``, ``weight_and_bias (B, Din + 1, Dout)`` -> ``(B, Dout)``.

    The last row of ``weight_and_bias`` is the bias: ``y_b = [x_b, 1] @ W_b``.
    """
    if weight_and_bias.dim() != 3 or weight_and_bias.shape[:2] != (x.shape[0], x.shape[1] + 1):
        raise ValueError(f"batched_linear: x {tuple(x.shape)} needs weights (B, Din + 1, Dout), "
                         f"got {tuple(weight_and_bias.shape)}")
    return torch.bmm(x.unsqueeze(1), weight_and_bias[:, :-1]).squeeze(1) + weight_and_bias[:, -1]


class HyperRegressor(nn.Module):
    """Applies generated layers: ``x (B, dims[0])`` through ``len(dims) - 1`` affine maps, swish between.

    ``forward(x, flat_weights)`` takes one ``(B, (d_in + 1) * d_out)`` tensor per layer.
    """

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"HyperRegressor: need at least input and output dims, got {list(dims)}")
        self.dims = [int(d) for d in dims]

    def weight_sizes(self) -> List[int]:
        """Number of generated values per layer."""
        return [(a + 1) * b for a, b in zip(self.dims[:-1], self.dims[1:])]

    def forward(self, x: torch.Tensor, flat_weights: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(flat_weights) != len(self.dims) - 1:
            raise ValueError(f"HyperRegressor: expected {len(self.dims) - 1} weight tensors, got {len(flat_weights)}")
        for index, (d_in, d_out, flat) in enumerate(zip(self.dims[:-1], self.dims[1:], flat_weights)):
            x = batched_linear(x, flat.view(x.shape[0], d_in + 1, d_out))
            if index < len(self.dims) - 2:
                x = F.silu(x)  # swish
        return x


def _kaiming_linears(modules: Sequence[nn.Module]) -> None:
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)


class HyperPose(nn.Module):
    """Single-scene HyperPose on an EfficientNet backbone (see module docstring).

    ``hyper_dim_t`` / ``hyper_dim_rot``: widths of the position / orientation hypernetworks
    (256 / 512 in the authors' configs); ``latent_dim``: the trained regressor's width (1024).
    ``forward(image (B, 3, H, W))`` -> dict ``position (B, 3)``, ``quaternion (B, 4)``.
    """

    def __init__(self, hyper_dim_t: int = 256, hyper_dim_rot: int = 512, latent_dim: int = 1024,
                 dropout: float = 0.1, backbone: Optional[EfficientNet] = None,
                 backbone_kwargs: Optional[dict] = None) -> None:
        super().__init__()
        self.backbone = backbone if backbone is not None else EfficientNet(**(backbone_kwargs or {}))
        feat = self.backbone.num_features
        self.fc1 = nn.Linear(feat, latent_dim)
        self.fc2 = nn.Linear(latent_dim, 3)
        self.fc3 = nn.Linear(latent_dim, 4)
        self.dropout = nn.Dropout(dropout)
        self.hyper_in_t_proj = nn.Linear(feat, hyper_dim_t)
        self.hyper_in_t = nn.Linear(feat, hyper_dim_t)
        self.hyper_in_t_fc_2 = nn.Linear(hyper_dim_t, hyper_dim_t)
        self.hypernet_t_fc_h2 = nn.Linear(hyper_dim_t, 3 * (hyper_dim_t + 1))
        self.hyper_in_rot_proj = nn.Linear(feat, hyper_dim_rot)
        self.hyper_in_rot = nn.Linear(feat, hyper_dim_rot)
        self.hyper_in_rot_fc_2 = nn.Linear(hyper_dim_rot, hyper_dim_rot)
        self.hypernet_rot_fc_h2 = nn.Linear(hyper_dim_rot, 4 * (hyper_dim_rot + 1))
        self.regressor_hyper_t = HyperRegressor([hyper_dim_t, 3])
        self.regressor_hyper_rot = HyperRegressor([hyper_dim_rot, 4])
        _kaiming_linears([self.fc1, self.fc2, self.fc3, self.hyper_in_t_proj, self.hyper_in_t, self.hyper_in_t_fc_2,
                          self.hypernet_t_fc_h2, self.hyper_in_rot_proj, self.hyper_in_rot, self.hyper_in_rot_fc_2,
                          self.hypernet_rot_fc_h2])

    def forward(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        g = self.backbone.extract_endpoints(image, ("pooled",))["pooled"]
        w_t = self.hypernet_t_fc_h2(F.silu(self.hyper_in_t_fc_2(self.hyper_in_t_proj(g))))
        w_rot = self.hypernet_rot_fc_h2(F.silu(self.hyper_in_rot_fc_2(self.hyper_in_rot_proj(g))))
        position_hyper = self.regressor_hyper_t(self.hyper_in_t(g), [w_t])
        quaternion_hyper = self.regressor_hyper_rot(self.hyper_in_rot(g), [w_rot])
        x = self.dropout(F.relu(self.fc1(g)))
        return {"position": self.fc2(x) + position_hyper, "quaternion": self.fc3(x) + quaternion_hyper}


class _HyperBranch(nn.Module):
    """Hypernetwork of one MS-HyperPose branch: input ``(B, D)`` -> flat weights of an MLP
    ``D -> hidden -> hidden * scale -> out`` (one swish + linear generator per layer)."""

    def __init__(self, dim: int, hidden: int, hidden_scale: float, out_dim: int) -> None:
        super().__init__()
        mid = int(hidden * hidden_scale)
        self.regressor = HyperRegressor([dim, hidden, mid, out_dim])
        sizes = self.regressor.weight_sizes()
        self.inputs = nn.ModuleList([nn.Linear(dim, dim) for _ in sizes])
        self.generators = nn.ModuleList([nn.Linear(dim, size) for size in sizes])

    def forward(self, hyper_input: torch.Tensor, desc: torch.Tensor) -> torch.Tensor:
        weights = [gen(F.silu(inp(hyper_input))) for inp, gen in zip(self.inputs, self.generators)]
        return self.regressor(desc, weights)


class MSHyperPose(MSTransformer):
    """Multi-scene HyperPose: MS-Transformer with shared heads plus hypernetwork regressors.

    Extra arguments: ``hyper_dim_t`` (256), ``hyper_dim_rot`` (512), ``hyper_t_hidden_scale``
    (0.5) and ``hyper_rot_hidden_scale`` (1.0), as in the authors' Cambridge config. At full size
    the generators are large (a ``D -> hidden (D + 1)`` linear per generated layer).
    """

    def __init__(self, num_scenes: int, hyper_dim_t: int = 256, hyper_dim_rot: int = 512,
                 hyper_t_hidden_scale: float = 0.5, hyper_rot_hidden_scale: float = 1.0, **kwargs) -> None:
        kwargs["shared_heads"] = True
        super().__init__(num_scenes, **kwargs)
        dim = self.hidden_dim
        self.hyper_in_t_proj = nn.Linear(self.backbone.num_features, dim)
        self.hyper_in_rot_proj = nn.Linear(self.backbone.num_features, dim)
        self.hyper_t = _HyperBranch(dim, hyper_dim_t, hyper_t_hidden_scale, 3)
        self.hyper_rot = _HyperBranch(dim, hyper_dim_rot, hyper_rot_hidden_scale, 4)
        # hypernetwork layers keep torch's default Linear initialization, as in the authors' code

    def _endpoints(self) -> List[str]:
        return [self.reduction_t, self.reduction_rot, "pooled"]

    def forward(self, image: torch.Tensor, scene: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        res = self.forward_transformers(image, scene)
        heads = self.forward_heads(res["desc_t"], res["desc_rot"], res["scene"])
        g = res.pop("pooled")
        hyper_t = self.hyper_t(res["desc_t"] + self.hyper_in_t_proj(g), res["desc_t"])
        hyper_rot = self.hyper_rot(res["desc_rot"] + self.hyper_in_rot_proj(g), res["desc_rot"])
        res["position"] = heads["position"] + hyper_t
        res["quaternion"] = heads["quaternion"] + hyper_rot
        return res
