"""Scene data: folders, loaders, augmentation, pose lists, synthetic scenes, dataset setup, view overlap.

``SceneDataset`` and ``AugmentParams`` are importable from here; they load lazily so that the setup
scripts (which only need :mod:`transpose.data.layout`) start quickly.
"""
from typing import Any

__all__ = ["SceneDataset", "AugmentParams"]


def __getattr__(name: str) -> Any:
    if name == "SceneDataset":
        from .scene import SceneDataset

        return SceneDataset
    if name == "AugmentParams":
        from .augment import AugmentParams

        return AugmentParams
    raise AttributeError(f"module 'transpose.data' has no attribute '{name}'")
