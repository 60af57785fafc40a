"""Torch dataset for absolute pose regression from a pose list (see :mod:`transpose.data.poselists`).

Transforms (plain PIL + torch, the MS-Transformer / PoseNet-family "baseline"):

- train: resize the shorter side to 256, random 224x224 crop, colour jitter (brightness,
  contrast, saturation 0.5, hue 0.2, applied in random order), ImageNet normalization;
- test: resize 256, centre 224x224 crop, ImageNet normalization.

Each item is a dict: ``image (3, 224, 224)`` float32, ``pose (4, 4)`` camera-to-world float32,
``position (3,)`` camera centre, ``quaternion (4,)`` (w, x, y, z; ``w >= 0``) of the
camera-to-world rotation, ``scene`` (int) and ``name`` (the image path as listed).

Multi-scene training draws scenes with equal probability via :func:`scene_balanced_sampler`
(the original repository instead padded each epoch with extra samples of the smaller scenes).
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import Dataset, WeightedRandomSampler

from .poselists import PoseList, read_pose_list

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "resize_shorter", "crop", "color_jitter", "to_normalized_tensor",
           "AprDataset", "scene_balanced_weights", "scene_balanced_sampler"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (aspect kept, bilinear with antialiasing)."""
    w, h = image.size
    if min(w, h) == size:
        return image
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    return image.resize((new_w, new_h), Image.BILINEAR)


def crop(image: Image.Image, size: int, random: bool, generator: Optional[torch.Generator] = None) -> Image.Image:
    """A ``size`` x ``size`` crop: uniformly random, or centred (rounded like torchvision)."""
    w, h = image.size
    if w < size or h < size:
        raise ValueError(f"crop: image {w}x{h} is smaller than the crop size {size}")
    if random:
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    else:
        top = int(round((h - size) / 2.0))
        left = int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _uniform(low: float, high: float, generator: Optional[torch.Generator]) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator))


def _shift_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue by ``shift`` of a full turn (in [-0.5, 0.5])."""
    h, s, v = image.convert("HSV").split()
    hue = np.asarray(h, dtype=np.uint8).copy()
    hue += np.uint8(int(round(shift * 255)) % 256)  # uint8 wraps around: the hue is circular
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert("RGB")


def color_jitter(image: Image.Image, brightness: float = 0.5, contrast: float = 0.5, saturation: float = 0.5,
                 hue: float = 0.2, generator: Optional[torch.Generator] = None) -> Image.Image:
    """Random brightness / contrast / saturation factors in ``[max(0, 1 - a), 1 + a]`` and a hue shift
    in ``[-hue, hue]``, applied in random order (as torchvision's ColorJitter)."""
    if not 0 <= hue <= 0.5:
        raise ValueError(f"color_jitter: hue must be in [0, 0.5], got {hue}")
    order = torch.randperm(4, generator=generator).tolist()
    for op in order:
        if op == 0 and brightness > 0:
            image = ImageEnhance.Brightness(image).enhance(_uniform(max(0.0, 1 - brightness), 1 + brightness, generator))
        elif op == 1 and contrast > 0:
            image = ImageEnhance.Contrast(image).enhance(_uniform(max(0.0, 1 - contrast), 1 + contrast, generator))
        elif op == 2 and saturation > 0:
            image = ImageEnhance.Color(image).enhance(_uniform(max(0.0, 1 - saturation), 1 + saturation, generator))
        elif op == 3 and hue > 0:
            image = _shift_hue(image, _uniform(-hue, hue, generator))
    return image


def to_normalized_tensor(image: Image.Image, mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """RGB PIL image -> float32 ``(3, H, W)``, scaled to [0, 1] then normalized per channel."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - m) / s


class AprDataset(Dataset):
    """Images and poses of a pose list (a path read with :func:`read_pose_list`, or a :class:`PoseList`).

    ``image_root``: folder the list's image paths are relative to. ``train``: random crop and colour
    jitter (``jitter=False`` turns the jitter off, as MS-Transformer's Cambridge ``no_augment``).
    ``resize`` / ``crop_size``: 256 / 224 by default.
    """

    def __init__(self, image_root: str, pose_list: Union[str, PoseList], train: bool = False, resize: int = 256,
                 crop_size: int = 224, jitter: bool = True, brightness: float = 0.5, contrast: float = 0.5,
                 saturation: float = 0.5, hue: float = 0.2, **list_kwargs) -> None:
        if not os.path.isdir(image_root):
            raise ValueError(f"image root is not a folder: {image_root}")
        if crop_size > resize:
            raise ValueError(f"crop_size {crop_size} must not exceed resize {resize}")
        self.poses = pose_list if isinstance(pose_list, PoseList) else read_pose_list(pose_list, **list_kwargs)
        self.image_root = image_root
        self.train = train
        self.resize = resize
        self.crop_size = crop_size
        self.jitter = (brightness, contrast, saturation, hue) if (train and jitter) else None
        self._positions = torch.from_numpy(self.poses.positions).float()
        self._quaternions = torch.from_numpy(self.poses.quaternions).float()
        self._poses = torch.from_numpy(self.poses.poses_c2w).float()

    def __len__(self) -> int:
        return len(self.poses)

    @property
    def scene_ids(self) -> np.ndarray:
        return self.poses.scene_ids

    @property
    def num_scenes(self) -> int:
        return len(self.poses.scene_names)

    def load_image(self, index: int) -> Image.Image:
        path = os.path.join(self.image_root, self.poses.image_paths[index])
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from None

    def __getitem__(self, index: int) -> Dict[str, object]:
        image = resize_shorter(self.load_image(index), self.resize)
        image = crop(image, self.crop_size, random=self.train)
        if self.jitter is not None:
            image = color_jitter(image, *self.jitter)
        return {
            "image": to_normalized_tensor(image),
            "pose": self._poses[index],
            "position": self._positions[index],
            "quaternion": self._quaternions[index],
            "scene": int(self.poses.scene_ids[index]),
            "name": self.poses.image_paths[index],
        }


def scene_balanced_weights(scene_ids: np.ndarray) -> np.ndarray:
    """Sampling weights ``(N,)`` (sum 1) giving every scene present the same total probability."""
    scene_ids = np.asarray(scene_ids, dtype=np.int64)
    if scene_ids.ndim != 1 or scene_ids.size == 0 or scene_ids.min() < 0:
        raise ValueError("scene_balanced_weights: expected a non-empty 1D array of non-negative scene ids")
    counts = np.bincount(scene_ids)
    present = np.count_nonzero(counts)
    return 1.0 / (present * counts[scene_ids].astype(np.float64))


def scene_balanced_sampler(scene_ids: np.ndarray, num_samples: Optional[int] = None,
                           generator: Optional[torch.Generator] = None) -> WeightedRandomSampler:
    """Sampler drawing scenes with equal probability (then frames uniformly within the scene).

    ``num_samples`` per epoch defaults to ``largest scene size x number of scenes`` (the epoch
    length of the original equalized datasets).
    """
    weights = scene_balanced_weights(scene_ids)
    counts = np.bincount(np.asarray(scene_ids, dtype=np.int64))
    if num_samples is None:
        num_samples = int(counts.max() * np.count_nonzero(counts))
    return WeightedRandomSampler(torch.from_numpy(weights), num_samples, replacement=True, generator=generator)
