"""Checkpoints: one file that holds everything needed to test a network or resume its training.

A checkpoint is a dict saved with ``torch.save`` (atomically)::

    {"format": "transpose-checkpoint", "kind": "scr" | "apr" | ...,
     "version": package version, "model": state_dict, "options": dict of training options
     (everything needed to rebuild the network, e.g. scene centre, width, uncertainty),
     "iteration": int, "training": {optimizer, scheduler, rng, ...} or absent}

``test.py`` rebuilds the network from ``options`` alone, so no training flag is repeated.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from .. import __version__, io

FORMAT = "transpose-checkpoint"


class CheckpointError(ValueError):
    """A file that is not a transpose checkpoint, or not of the expected kind."""


def rng_state() -> Dict[str, Any]:
    """Random number generator states of python, numpy and torch (to resume bit-for-bit)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(path: os.PathLike | str, *, kind: str, model: torch.nn.Module, options: Dict[str, Any],
                    iteration: int, training: Optional[Dict[str, Any]] = None) -> None:
    """Write a checkpoint atomically (a crash mid-write leaves the previous file intact)."""
    module = model.module if hasattr(model, "module") else model  # unwrap DistributedDataParallel
    payload = {
        "format": FORMAT,
        "kind": kind,
        "version": __version__,
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "options": dict(options),
        "iteration": int(iteration),
    }
    if training is not None:
        payload["training"] = training
    io.save_torch(path, payload)


def load_checkpoint(path: os.PathLike | str, kind: Optional[str] = None) -> Dict[str, Any]:
    """Read a checkpoint; CheckpointError naming the file if it is unreadable or of the wrong kind."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        # weights_only=False: the training section holds RNG states (tuples, numpy arrays).
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated / foreign files: one clear line
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = " (a bare state_dict, e.g. a DSAC* .net file?)" if isinstance(payload, dict) else ""
        raise CheckpointError(f"{path}: not a transpose checkpoint{hint}")
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(f"{path}: is a '{payload.get('kind')}' checkpoint, expected '{kind}'")
    return payload
