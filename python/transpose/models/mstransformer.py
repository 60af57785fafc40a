"""MS-Transformer: multi-scene absolute pose regression (Shavit, Ferens & Keller, ICCV 2021).

Two branches on two EfficientNet-B0 feature levels: position on ``reduction_4`` (112 channels,
stride 16) and orientation on ``reduction_3`` (40 channels, stride 8), as in the authors' code.
Each branch: 1x1 projection to ``hidden_dim``, learned 2D positional encoding (row and column
embeddings, concatenated; one module shared by both branches as in the original), a DETR-style
transformer (pre-norm encoder and decoder, GELU) and one learned query per scene. The decoder
outputs of both branches are concatenated per scene and scored by a linear layer; a log-softmax
over scenes gives ``scene_log_probs`` (trained with an NLL loss). The query of the true scene
(training, when ``scene`` is given) or of the most probable scene (test) is passed to the
position / orientation MLP heads (per scene, or ``shared_heads=True``).

``nheads`` is an explicit argument: the authors' configs say 4, but their Transformer read a
different key and so silently ran 8 heads; pass ``nheads=8`` to reproduce the released models.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import EfficientNet

__all__ = ["PositionEmbeddingLearned2D", "TransformerEncoderLayer", "TransformerDecoderLayer",
           "PoseTransformer", "PoseRegressor", "MSTransformer"]


def _activation(name: str):
    if name == "gelu":
        return F.gelu
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown activation {name!r} (use 'gelu' or 'relu')")


class PositionEmbeddingLearned2D(nn.Module):
    """Learned absolute 2D encoding: ``[col_embed[x], row_embed[y]]`` -> ``(H*W, dim)`` (x fastest)."""

    def __init__(self, dim: int, max_size: int = 50) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"PositionEmbeddingLearned2D: dim must be even, got {dim}")
        self.max_size = max_size
        self.row_embed = nn.Embedding(max_size, dim // 2)
        self.col_embed = nn.Embedding(max_size, dim // 2)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, height: int, width: int) -> torch.Tensor:
        if height > self.max_size or width > self.max_size:
            raise ValueError(f"feature map {height}x{width} exceeds the positional encoding's "
                             f"{self.max_size}x{self.max_size}; use smaller images or a larger max_positions")
        device = self.row_embed.weight.device
        x_emb = self.col_embed(torch.arange(width, device=device))  # (W, D/2)
        y_emb = self.row_embed(torch.arange(height, device=device))  # (H, D/2)
        pos = torch.cat([x_emb[None].expand(height, -1, -1), y_emb[:, None].expand(-1, width, -1)], dim=-1)
        return pos.reshape(height * width, -1)


class TransformerEncoderLayer(nn.Module):
    """Pre-norm encoder layer; the positional encoding is added to queries and keys only."""

    def __init__(self, dim: int, nheads: int, dim_feedforward: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = _activation(activation)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``src (B, L, D)``, ``pos (L, D)`` -> ``(B, L, D)``."""
        x = self.norm1(src)
        qk = x + pos
        src = src + self.dropout1(self.self_attn(qk, qk, value=x, need_weights=False)[0])
        x = self.norm2(src)
        return src + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class TransformerDecoderLayer(nn.Module):
    """Pre-norm decoder layer: self-attention over queries, cross-attention to the memory, FFN."""

    def __init__(self, dim: int, nheads: int, dim_feedforward: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = _activation(activation)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """``tgt (B, S, D)``, ``memory (B, L, D)``, ``pos (L, D)``, ``query_pos (S, D)`` -> ``(B, S, D)``."""
        x = self.norm1(tgt)
        qk = x + query_pos
        tgt = tgt + self.dropout1(self.self_attn(qk, qk, value=x, need_weights=False)[0])
        x = self.norm2(tgt)
        attended = self.multihead_attn(x + query_pos, memory + pos, value=memory, need_weights=False)[0]
        tgt = tgt + self.dropout2(attended)
        x = self.norm3(tgt)
        return tgt + self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class PoseTransformer(nn.Module):
    """DETR-style encoder-decoder (pre-norm, final LayerNorms on both stacks).

    ``forward(src (B, L, D), pos (L, D), queries (S, D))`` -> decoder output ``(B, S, D)``
    (the decoder input is zero; the learned queries act as query positional encodings).
    """

    def __init__(self, dim: int = 256, nheads: int = 4, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 256, dropout: float = 0.1, activation: str = "gelu") -> None:
        super().__init__()
        if dim % nheads:
            raise ValueError(f"PoseTransformer: hidden_dim {dim} is not divisible by nheads {nheads}")
        self.encoder_layers = nn.ModuleList([TransformerEncoderLayer(dim, nheads, dim_feedforward, dropout, activation)
                                             for _ in range(num_encoder_layers)])
        self.decoder_layers = nn.ModuleList([TransformerDecoderLayer(dim, nheads, dim_feedforward, dropout, activation)
                                             for _ in range(num_decoder_layers)])
        self.encoder_norm = nn.LayerNorm(dim)
        self.decoder_norm = nn.LayerNorm(dim)
        self.dim = dim
        self.nheads = nheads
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        memory = src
        for layer in self.encoder_layers:
            memory = layer(memory, pos)
        memory = self.encoder_norm(memory)
        tgt = torch.zeros(src.shape[0], queries.shape[0], self.dim, dtype=src.dtype, device=src.device)
        for layer in self.decoder_layers:
            tgt = layer(tgt, memory, pos, queries)
        return self.decoder_norm(tgt)


class PoseRegressor(nn.Module):
    """MLP ``(B, D)`` -> GELU(fc ``hidden``) -> ``(B, out)``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 1024) -> None:
        super().__init__()
        self.fc_h = nn.Linear(in_dim, hidden_dim)
        self.fc_o = nn.Linear(hidden_dim, out_dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_o(F.gelu(self.fc_h(x)))


class MSTransformer(nn.Module):
    """Multi-scene transformer APR on EfficientNet-B0 (see module docstring).

    ``forward(image (B, 3, H, W), scene=None)`` -> dict ``position (B, 3)``, ``quaternion (B, 4)``,
    ``scene_log_probs (B, S)``, ``scene (B,)`` (the scene whose query was used), and the selected
    decoder outputs ``desc_t``, ``desc_rot`` ``(B, hidden_dim)``. Pass the true ``scene`` ids in
    training; at test leave it ``None`` so the most probable scene is used.
    ``backbone``: an :class:`EfficientNet` (default: a fresh B0; ``width_mult``/``depth_mult``
    below 1 in ``backbone_kwargs`` give a tiny network for tests).
    """

    def __init__(self, num_scenes: int, hidden_dim: int = 256, nheads: int = 4, dim_feedforward: int = 256,
                 dropout: float = 0.1, num_t_encoder_layers: int = 6, num_t_decoder_layers: int = 6,
                 num_rot_encoder_layers: int = 4, num_rot_decoder_layers: int = 4,
                 reduction_t: str = "reduction_4", reduction_rot: str = "reduction_3",
                 shared_heads: bool = False, head_hidden_dim: int = 1024, activation: str = "gelu",
                 max_positions: int = 50, backbone: Optional[EfficientNet] = None,
                 backbone_kwargs: Optional[dict] = None) -> None:
        super().__init__()
        if num_scenes < 1:
            raise ValueError(f"MSTransformer: num_scenes must be >= 1, got {num_scenes}")
        self.backbone = backbone if backbone is not None else EfficientNet(**(backbone_kwargs or {}))
        for name in (reduction_t, reduction_rot):
            if name not in self.backbone.reduction_channels:
                raise ValueError(f"MSTransformer: unknown reduction {name!r}; "
                                 f"choose from {sorted(self.backbone.reduction_channels)}")
        self.num_scenes = num_scenes
        self.reduction_t, self.reduction_rot = reduction_t, reduction_rot
        self.hidden_dim = hidden_dim
        self.nheads = nheads
        self.shared_heads = shared_heads
        self.position_embedding = PositionEmbeddingLearned2D(hidden_dim, max_positions)
        self.transformer_t = PoseTransformer(hidden_dim, nheads, num_t_encoder_layers, num_t_decoder_layers,
                                             dim_feedforward, dropout, activation)
        self.transformer_rot = PoseTransformer(hidden_dim, nheads, num_rot_encoder_layers, num_rot_decoder_layers,
                                               dim_feedforward, dropout, activation)
        self.input_proj_t = nn.Conv2d(self.backbone.reduction_channels[reduction_t], hidden_dim, 1)
        self.input_proj_rot = nn.Conv2d(self.backbone.reduction_channels[reduction_rot], hidden_dim, 1)
        self.query_embed_t = nn.Embedding(num_scenes, hidden_dim)
        self.query_embed_rot = nn.Embedding(num_scenes, hidden_dim)
        self.scene_embed = nn.Linear(2 * hidden_dim, 1)
        n_heads = 1 if shared_heads else num_scenes
        self.regressor_head_t = nn.ModuleList([PoseRegressor(hidden_dim, 3, head_hidden_dim) for _ in range(n_heads)])
        self.regressor_head_rot = nn.ModuleList([PoseRegressor(hidden_dim, 4, head_hidden_dim) for _ in range(n_heads)])

    def _endpoints(self) -> List[str]:
        return [self.reduction_t, self.reduction_rot]

    def _branch(self, feature: torch.Tensor, proj: nn.Conv2d, transformer: PoseTransformer,
                queries: torch.Tensor) -> torch.Tensor:
        src = proj(feature)  # (B, D, h, w)
        b, d, h, w = src.shape
        pos = self.position_embedding(h, w).to(src.dtype)
        return transformer(src.flatten(2).transpose(1, 2), pos, queries)  # (B, S, D)

    def forward_transformers(self, image: torch.Tensor, scene: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Backbone + transformers + scene classifier; the selected scene's decoder outputs."""
        if scene is not None:
            scene = scene.to(device=image.device, dtype=torch.long).reshape(-1)
            if scene.shape[0] != image.shape[0] or (scene < 0).any() or (scene >= self.num_scenes).any():
                raise ValueError(f"MSTransformer: scene ids must be (B,) in [0, {self.num_scenes}), "
                                 f"got {scene.tolist()}")
        feats = self.backbone.extract_endpoints(image, self._endpoints())
        local_t = self._branch(feats[self.reduction_t], self.input_proj_t, self.transformer_t, self.query_embed_t.weight)
        local_rot = self._branch(feats[self.reduction_rot], self.input_proj_rot, self.transformer_rot,
                                 self.query_embed_rot.weight)
        logits = self.scene_embed(torch.cat([local_t, local_rot], dim=2)).squeeze(2)  # (B, S)
        scene_log_probs = F.log_softmax(logits, dim=1)
        selected = scene_log_probs.argmax(dim=1) if scene is None else scene
        rows = torch.arange(image.shape[0], device=image.device)
        out = {"desc_t": local_t[rows, selected], "desc_rot": local_rot[rows, selected],
               "scene_log_probs": scene_log_probs, "scene": selected}
        if "pooled" in feats:
            out["pooled"] = feats["pooled"]
        return out

    def forward_heads(self, desc_t: torch.Tensor, desc_rot: torch.Tensor, scene: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per-scene (or shared) MLP heads on ``(B, D)`` descriptors -> position, quaternion."""
        if self.shared_heads:
            return {"position": self.regressor_head_t[0](desc_t), "quaternion": self.regressor_head_rot[0](desc_rot)}
        position = desc_t.new_zeros(desc_t.shape[0], 3)
        quaternion = desc_rot.new_zeros(desc_rot.shape[0], 4)
        for s in torch.unique(scene).tolist():
            rows = scene == s
            position = position.index_put((rows,), self.regressor_head_t[s](desc_t[rows]))
            quaternion = quaternion.index_put((rows,), self.regressor_head_rot[s](desc_rot[rows]))
        return {"position": position, "quaternion": quaternion}

    def forward(self, image: torch.Tensor, scene: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        res = self.forward_transformers(image, scene)
        res.update(self.forward_heads(res["desc_t"], res["desc_rot"], res["scene"]))
        return res
