"""APR model factory and the shipped hyperparameter files (``apr_configs/``).

``load_apr_config("7Scenes", "ms-transformer")`` returns one model section of
``apr_configs/7Scenes_config.json`` merged over its ``general`` section, with ``model`` set;
``build_apr_model(config)`` builds the network it describes. Training-only keys (``lr``,
``batch_size``, ``s_x``, ...) are ignored by the factory and meant for the training loop (the
pose loss: :func:`transpose.losses.build_pose_criterion`).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping

from torch import nn

__all__ = ["APR_MODELS", "APR_CONFIG_DIR", "apr_config_path", "load_apr_config", "build_apr_model"]

APR_MODELS = ("posenet", "ms-transformer", "hyperpose", "ms-hyperpose")
APR_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apr_configs")


def apr_config_path(name: str) -> str:
    """Path of a shipped config (``"7Scenes"``, ``"CambridgeLandmarks"``) or ``name`` itself if it is a file."""
    if os.path.isfile(name):
        return name
    path = os.path.join(APR_CONFIG_DIR, f"{name}_config.json")
    if not os.path.isfile(path):
        shipped = sorted(f[: -len("_config.json")] for f in os.listdir(APR_CONFIG_DIR) if f.endswith("_config.json"))
        raise ValueError(f"APR config {name!r} is neither a file nor one of {shipped}")
    return path


def load_apr_config(name: str, model: str) -> Dict[str, Any]:
    """The ``model`` section of a config file (``general`` keys underneath), with ``"model": model``."""
    path = apr_config_path(name)
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read APR config {path}: {exc}") from None
    if model not in data:
        sections = sorted(k for k in data if k in APR_MODELS)
        raise ValueError(f"{path} has no section {model!r} (sections: {sections})")
    config = {**data.get("general", {}), **data[model], "model": model}
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _ms_kwargs(config: Mapping[str, Any]) -> Dict[str, Any]:
    reduction = config.get("reduction", ["reduction_4", "reduction_3"])
    if len(reduction) != 2:
        raise ValueError(f"APR config: 'reduction' needs [position level, orientation level], got {reduction}")
    if "num_scenes" not in config:
        raise ValueError("APR config: 'num_scenes' is required for multi-scene models")
    return dict(
        num_scenes=int(config["num_scenes"]), hidden_dim=config.get("hidden_dim", 256),
        nheads=config.get("nheads", 4), dim_feedforward=config.get("dim_feedforward", 256),
        dropout=config.get("dropout", 0.1),
        num_t_encoder_layers=config.get("num_t_encoder_layers", 6),
        num_t_decoder_layers=config.get("num_t_decoder_layers", 6),
        num_rot_encoder_layers=config.get("num_rot_encoder_layers", 4),
        num_rot_decoder_layers=config.get("num_rot_decoder_layers", 4),
        reduction_t=reduction[0], reduction_rot=reduction[1],
        head_hidden_dim=config.get("head_hidden_dim", config.get("reg_hidden_dim", 1024)),
        backbone_kwargs=config.get("backbone_kwargs"),
    )


def build_apr_model(config: Mapping[str, Any]) -> nn.Module:
    """Build ``config["model"]`` (one of :data:`APR_MODELS`) from its hyperparameters.

    posenet: ``backbone`` (googlenet | resnet34), ``fc_dim`` (2048), ``dropout`` (0.5),
    ``aux_heads`` (true), ``backbone_width`` (64). ms-transformer: MS-Transformer's keys
    (``num_scenes``, ``hidden_dim``, ``nheads``, ``dim_feedforward``, ``dropout``,
    ``num_{t,rot}_{encoder,decoder}_layers``, ``reduction``) plus ``shared_heads``,
    ``head_hidden_dim``. hyperpose: ``hyper_dim_t``, ``hyper_dim_rot``, ``latent_dim``, ``dropout``.
    ms-hyperpose: the ms-transformer keys plus ``hyper_dim_t``, ``hyper_dim_rot``,
    ``hyper_t_hidden_scale``. ``backbone_kwargs`` (EfficientNet models) is passed to the backbone.
    """
    model = config.get("model")
    if model == "posenet":
        from .posenet import PoseNet

        return PoseNet(config.get("backbone", "googlenet"), hidden_dim=config.get("fc_dim", 2048),
                       dropout=config.get("dropout", 0.5), aux_heads=config.get("aux_heads", True),
                       backbone_width=config.get("backbone_width", 64))
    if model == "ms-transformer":
        from .mstransformer import MSTransformer

        return MSTransformer(shared_heads=config.get("shared_heads", False), **_ms_kwargs(config))
    if model == "hyperpose":
        from .hyperpose import HyperPose

        return HyperPose(hyper_dim_t=config.get("hyper_dim_t", 256), hyper_dim_rot=config.get("hyper_dim_rot", 512),
                         latent_dim=config.get("latent_dim", 1024), dropout=config.get("dropout", 0.1),
                         backbone_kwargs=config.get("backbone_kwargs"))
    if model == "ms-hyperpose":
        from .hyperpose import MSHyperPose

        return MSHyperPose(hyper_dim_t=config.get("hyper_dim_t", 256), hyper_dim_rot=config.get("hyper_dim_rot", 512),
                           hyper_t_hidden_scale=config.get("hyper_t_hidden_scale", 0.5), **_ms_kwargs(config))
    raise ValueError(f"APR config: 'model' must be one of {list(APR_MODELS)}, got {model!r}")
