"""A torch Dataset over one section of a scene folder (see :mod:`transpose.data.layout`).

Each item is a dict::

    image    float32 (1, H, W) grey, normalised (x - 0.4) / 0.25 as DSAC*  (mode 'scr')
             float32 (3, H, W) RGB, ImageNet mean/std                     (mode 'apr')
    K        float32 (3, 3)   intrinsics of the returned image
    pose     float32 (4, 4)   camera-to-world of the returned image
    coords   float32 (3, ceil(H/8), ceil(W/8))  scene coordinates of the cell centres (8j+4, 8i+4),
             zeros where there is no label                      (when the section has depth or init)
    mask     bool (ceil(H/8), ceil(W/8))  where ``coords`` holds a label
    depth    float32 (H, W) metres, 0 = invalid                 (when the section has depth/)
    normals  float32 (3, ceil(H/8), ceil(W/8)) world-frame normals, zeros = none (when normal/ exists)
    name     str, the frame key;  index  int

``image_height`` resizes (K rescaled); ``augment`` applies a random zoom, in-plane rotation,
brightness and contrast with K, pose and every target transformed consistently (see
:mod:`transpose.data.augment`). All per-item work is vectorised; the dataset holds only paths and
settings, so DataLoader workers can pickle it, and it draws its randomness from torch's RNG, which
DataLoader seeds differently in every worker.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import geometry
from . import layout
from .augment import (AugmentParams, adjust_brightness_contrast, apply_shadow, camera_effects, map_points,
                      nearby_view, relight_image, sample_augmentation, sample_nearest, synthesize_view,
                      view_transform, warp_image)

__all__ = ["SceneDataset", "SCR_MEAN", "SCR_STD", "IMAGENET_MEAN", "IMAGENET_STD", "map_stride"]

#: DSAC*'s grey-level normalisation.
SCR_MEAN, SCR_STD = 0.4, 0.25
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODES = ("scr", "apr")
TARGETS = ("auto", "init", "depth", "none")
ARRAY_EXTS = (".dat", ".npy", ".npz")
DEPTH_EXTS = (".png",) + ARRAY_EXTS


def map_stride(image_size: Tuple[int, int], map_size: Tuple[int, int], name: str) -> int:
    """The integer pixel stride of a map ``(h, w)`` laid over an image ``(H, W)``.

    A map at stride ``s`` has ``ceil(H / s)`` (or ``floor``) rows and likewise columns; stride 1 is
    full resolution, stride 8 is DSAC*'s ``init/``. ValueError naming ``name`` otherwise.
    """
    H, W = image_size
    h, w = map_size
    if h > 0 and w > 0:
        s = max(1, int(round(H / h)))
        if h in (H // s, -(-H // s)) and w in (W // s, -(-W // s)):
            return s
    raise ValueError(f"{name}: map of size {h}x{w} does not fit the {H}x{W} image at any integer stride")


class SceneDataset(Dataset):
    """Frames of one section of a scene folder, with consistent geometric targets.

    Args:
        scene: scene folder, or a scene name under ``root`` (as DSAC*: ``7scenes_chess``).
        section: ``train``, ``test``, ``train_sim``, ... (``train`` also finds ``training``).
        mode: ``'scr'`` (normalised grey image) or ``'apr'`` (normalised RGB image).
        augment: random zoom / in-plane rotation / brightness / contrast (see ``aug``).
        image_height: resize every image to this height (aspect kept, K rescaled); None keeps it.
        output_size: fixed ``(H, W)`` of the returned image (a centred crop/pad of the resized,
            augmented image, K shifted to match) so that items can be batched; None lets the
            size follow ``image_height`` and the zoom.
        targets: where coordinate targets come from: ``'init'`` (sparse maps), ``'depth'``
            (back-projected), ``'none'``, or ``'auto'`` (init when present, else depth, else none).
        aug: augmentation ranges.
        mean, std: image normalisation (defaults: DSAC*'s 0.4 / 0.25 for SCR, ImageNet for APR).
        root: where scene names are looked up.
        stride: cell size of the coordinate targets (8).
        load_depth, load_normals: return ``depth`` / ``normals`` when the section has them.
        frames: optional subset of frame keys (in the given order).
        cache_mb: keep decoded images, depth, init and normal maps in memory up to this many MiB
            (0: read every item from disk). Decoding a 640x480 PNG image and its depth takes ~30 ms,
            more than the augmentation and the network step of a small CPU training together; with
            the cache every frame is decoded once. Each DataLoader worker process holds its own copy,
            which lives as long as the worker; the training loop keeps its workers for the whole run
            (``persistent_workers``), so with ``--workers N`` each worker decodes a frame once too.
    """

    def __init__(self, scene: Union[str, Path], section: str = "train", mode: str = "scr",
                 augment: bool = False, image_height: Optional[int] = None,
                 output_size: Optional[Tuple[int, int]] = None, targets: str = "auto",
                 aug: Optional[AugmentParams] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, root: Union[str, Path] = layout.DEFAULT_ROOT,
                 stride: int = 8, load_depth: bool = True, load_normals: bool = True,
                 frames: Optional[Sequence[str]] = None, cache_mb: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got '{mode}'")
        if targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, got '{targets}'")
        if image_height is not None and int(image_height) <= 0:
            raise ValueError(f"image_height must be positive, got {image_height}")
        if output_size is not None and (len(output_size) != 2 or min(output_size) <= 0):
            raise ValueError(f"output_size must be (H, W) with positive sides, got {output_size}")
        self.scene_dir = layout.resolve_scene(scene, root)
        self.section = section
        self.section_dir = layout.section_dir(self.scene_dir, section)
        self.mode = mode
        self.augment = bool(augment)
        self.aug = aug or AugmentParams()
        self.image_height = None if image_height is None else int(image_height)
        self.output_size = None if output_size is None else (int(output_size[0]), int(output_size[1]))
        self.stride = int(stride)
        grey = mode == "scr"
        self.mean = tuple(mean) if mean is not None else ((SCR_MEAN,) if grey else IMAGENET_MEAN)
        self.std = tuple(std) if std is not None else ((SCR_STD,) if grey else IMAGENET_STD)
        if len(self.mean) != (1 if grey else 3) or len(self.std) != len(self.mean) or min(self.std) <= 0:
            raise ValueError(f"mean/std must have {1 if grey else 3} values (std > 0), got {self.mean} / {self.std}")

        sec = self.section_dir
        images = layout.index_folder(sec / "rgb", layout.IMAGE_EXTS)
        if not images:
            raise ValueError(f"{sec / 'rgb'}: no images (.png/.jpg) found")
        poses = layout.index_folder(sec / "poses", (".txt",))
        calibs = layout.index_folder(sec / "calibration", (".txt",))
        inits = layout.index_folder(sec / "init", ARRAY_EXTS)
        depths = layout.index_folder(sec / "depth", DEPTH_EXTS)
        normals = layout.index_folder(sec / "normal", ARRAY_EXTS)

        keys = list(images) if frames is None else list(frames)
        for key in keys:
            if key not in images:
                raise ValueError(f"{sec / 'rgb'}: no image for frame '{key}'")
            if key not in poses:
                raise ValueError(f"{images[key]}: no pose file for this frame in {sec / 'poses'}")
            if key not in calibs:
                raise ValueError(f"{images[key]}: no calibration file for this frame in {sec / 'calibration'}")

        if targets == "auto":
            targets = "init" if inits else ("depth" if depths else "none")
        for name, table in (("init", inits), ("depth", depths)):
            if targets == name:
                missing = [k for k in keys if k not in table]
                if missing:
                    raise ValueError(f"{images[missing[0]]}: no {name} file for this frame in {sec / name} "
                                     f"({len(missing)} of {len(keys)} frames lack one)")
        self.targets = targets
        if self.augment and self.aug.view_shift > 0:
            # a re-rendered view needs a depth map to move its pixels, and gets its targets from it
            if targets != "depth":
                raise ValueError(f"{sec}: novel-view augmentation (view_shift) needs depth maps as the coordinate "
                                 f"targets (these frames use '{targets}')")
        self.frames: List[str] = keys
        self.image_paths = [images[k] for k in keys]
        self.pose_paths = [poses[k] for k in keys]
        self.calibration_paths = [calibs[k] for k in keys]
        self.init_paths = [inits.get(k) for k in keys]
        self.depth_paths = [depths.get(k) for k in keys] if (load_depth or targets == "depth") else [None] * len(keys)
        # relighting reads normals even when the items do not return them
        read_normals = load_normals or (self.augment and self.aug.relight > 0)
        self.normal_paths = [normals.get(k) for k in keys] if read_normals else [None] * len(keys)
        self.has_depth = bool(depths) and all(p is not None for p in self.depth_paths)
        self.has_normals = load_normals and bool(normals) and all(p is not None for p in self.normal_paths)
        if not cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.cache_bytes = int(cache_mb * 2 ** 20)
        self._cache: Dict[Tuple[str, str], np.ndarray] = {}
        self._cached_bytes = 0
        # poses are read up front: cheap, and a broken pose file fails now, naming the file
        self.poses = np.stack([layout.read_pose(p) for p in self.pose_paths]) if keys else np.zeros((0, 4, 4))

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        return (f"SceneDataset({str(self.scene_dir)!r}, section={self.section!r}, mode={self.mode!r}, "
                f"frames={len(self)}, targets={self.targets!r}, augment={self.augment})")

    # ------------------------------------------------------------------ per item

    def _read(self, kind: str, path: Path, reader: Callable[[Path], np.ndarray]) -> np.ndarray:
        """``reader(path)``, from the in-memory cache when it holds it (read-only arrays there: an
        item must never write into what the next epoch reads)."""
        key = (kind, str(path))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        arr = reader(path)
        if self._cached_bytes + arr.nbytes <= self.cache_bytes:
            arr.flags.writeable = False
            self._cache[key] = arr
            self._cached_bytes += arr.nbytes
        return arr

    def intrinsics(self, index: int) -> np.ndarray:
        """Original (un-resized) K ``(3, 3)`` of frame ``index`` (reads the image header for its size)."""
        from PIL import Image

        path = self.image_paths[index]
        try:
            with Image.open(path) as im:
                W, H = im.size
        except OSError as exc:
            raise ValueError(f"{path}: cannot read image ({exc})") from None
        return layout.read_calibration(self.calibration_paths[index], W, H)

    def __getitem__(self, index: int) -> Dict[str, object]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} frames")
        key = self.frames[index]
        grey = self.mode == "scr"
        raw = self._read("grey" if grey else "rgb", self.image_paths[index], lambda p: layout.read_image(p, gray=grey))
        if raw.ndim == 2:
            raw = raw[:, :, None]
        H, W = raw.shape[:2]
        K_in = layout.read_calibration(self.calibration_paths[index], W, H)
        T_in = self.poses[index]

        scale = 1.0 if self.image_height is None else self.image_height / H
        params = {"scale": 1.0, "angle_deg": 0.0, "brightness": 1.0, "contrast": 1.0}
        if self.augment:
            params = sample_augmentation(self.aug)
        depth = None
        if self.depth_paths[index] is not None:
            depth = self._read("depth", self.depth_paths[index], layout.read_depth)
            d_stride = map_stride((H, W), depth.shape, str(self.depth_paths[index]))
        source = None  # with a re-rendered view: where each of its pixels was in the frame (x, y)
        if params.get("view") is not None:
            if depth.shape != (H, W):
                raise ValueError(f"{self.depth_paths[index]}: novel-view augmentation needs depth at the image's "
                                 f"resolution {W}x{H}, got {depth.shape[1]}x{depth.shape[0]}")
            known = depth[np.isfinite(depth) & (depth > 0)]
            reach = float(np.median(known)) if known.size else 1.0
            T_new = nearby_view(T_in, params["view"] * reach, reach)
            raw, depth, source = synthesize_view(raw, depth, K_in, T_in, T_new)
            T_in = T_new
        scale *= params["scale"]
        size_out = self.output_size
        if size_out is None and self.image_height is not None and not self.augment:
            size_out = (self.image_height, max(1, int(round(W * scale))))
        view = view_transform(K_in, (H, W), scale, params["angle_deg"], size_out)
        H_out, W_out = view.size

        # per-item pixel work in numpy (single-threaded): torch's intra-op threads thrash when
        # several DataLoader workers or processes share a few cores
        image = _resample_image(raw, view.M, (H, W), view.size, scale)
        # cell centres of the output image, and the input pixel on the same ray
        h_c, w_c = -(-H_out // self.stride), -(-W_out // self.stride)
        cells_in = map_points(view.M, geometry.cell_centers(h_c, w_c, self.stride))  # (h_c, w_c, 2)
        n_out = None
        if self.normal_paths[index] is not None:
            path = self.normal_paths[index]
            normal = self._read("normal", path, layout.read_normals)
            n_stride = map_stride((H, W), normal.shape[1:], str(path))
            # world-frame normals belong to the surface, not the view: a re-rendered cell takes the
            # normal of the frame's pixel it came from
            at, seen = cells_in, None
            if source is not None:
                at, seen = sample_nearest(np.moveaxis(source, -1, 0), cells_in, 1, depth > 0)
                at = np.moveaxis(at, 0, -1)
            n_out, _ = sample_nearest(np.nan_to_num(normal), at, n_stride, labelled_cells(normal))
            if seen is not None:
                n_out = np.where(seen[None], n_out, 0.0).astype(n_out.dtype)
        if params.get("relight", 0.0) > 0 and n_out is not None:
            image = relight_image(image, n_out, params["light"], params["relight"], self.stride)
        if params.get("shadow") is not None:
            image = apply_shadow(image, *params["shadow"])
        if params.get("camera") is not None:
            image = camera_effects(image, **params["camera"])
        image = adjust_brightness_contrast(image, params["brightness"], params["contrast"])
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        inv_std = (1.0 / np.asarray(self.std, dtype=np.float32))[:, None, None]
        item: Dict[str, object] = {
            "image": torch.from_numpy(np.ascontiguousarray((image - mean) * inv_std)),
            "K": torch.from_numpy(view.K.astype(np.float32)),
            "pose": torch.from_numpy(view.pose(T_in).astype(np.float32)),
            "name": key,
            "index": index,
        }

        if self.targets == "init":
            path = self.init_paths[index]
            init = self._read("init", path, layout.read_coords)
            i_stride = map_stride((H, W), init.shape[1:], str(path))
            labelled = labelled_cells(init)
            coords, mask = sample_nearest(np.nan_to_num(init), cells_in, i_stride, labelled)
        elif self.targets == "depth":
            z, mask = sample_nearest(depth[None], cells_in, d_stride, depth > 0)
            # back-project on the exact ray of each output cell centre (input pixel cells_in)
            pts = geometry.backproject_depth(np.where(mask, z[0], 0.0), K_in, T_in, pixels=cells_in)
            coords = np.where(mask[None], np.nan_to_num(np.moveaxis(pts, -1, 0)), 0.0)
        if self.targets != "none":
            item["coords"] = torch.from_numpy(np.ascontiguousarray(coords, dtype=np.float32))
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
        if depth is not None and self.has_depth:
            if view.is_identity and d_stride == 1 and depth.shape == (H_out, W_out):
                d_out = depth.copy()
            else:
                pix_in = map_points(view.M, _pixel_centers(H_out, W_out))
                d_out, _ = sample_nearest(depth[None], pix_in, d_stride, depth > 0)
                d_out = d_out[0]
            item["depth"] = torch.from_numpy(np.ascontiguousarray(d_out, dtype=np.float32))
        if self.has_normals:
            item["normals"] = torch.from_numpy(np.ascontiguousarray(n_out, dtype=np.float32))
        return item


def coordinate_targets(scene: Union[str, Path], section: str, sparse: bool = False,
                       root: Union[str, Path] = layout.DEFAULT_ROOT) -> str:
    """The ``targets`` a section's coordinate training and errors use: ``'init'`` with ``sparse``,
    else ``'depth'`` when the section has depth (exact at any cell centre, where ``init/`` maps can
    only be looked up at the nearest original cell: up to ~1 px off at a quarter of the resolution),
    else ``'auto'``."""
    if sparse:
        return "init"
    has_depth = (layout.section_dir(layout.resolve_scene(scene, root), section) / "depth").is_dir()
    return "depth" if has_depth else "auto"


def section_repeats(sizes: Sequence[int]) -> List[int]:
    """How many times to count each of several datasets of ``sizes`` frames so that each weighs
    about as much as the largest: ``round(largest / size)``, at least 1. E.g. 900 renders and 90
    photos -> ``[1, 10]``."""
    sizes = [max(int(n), 1) for n in sizes]
    return [max(1, round(max(sizes) / n)) for n in sizes]


def labelled_cells(values: np.ndarray) -> np.ndarray:
    """``(h, w)`` cells of a ``(3, h, w)`` map that hold a label: finite, not all zeros (DSAC*'s
    "no label") and not all -1 (CrossLoc's own converter marks missing points so)."""
    return (np.all(np.isfinite(values), axis=0) & np.any(values != 0, axis=0)
            & ~np.all(values == -1, axis=0))


def _pixel_centers(height: int, width: int) -> np.ndarray:
    """Positions ``(height, width, 2)`` of every pixel: pixel ``(i, j)`` is at ``(x, y) = (j, i)`` (OpenCV)."""
    gx, gy = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    return np.stack([gx, gy], axis=-1)


def _resample_image(raw: np.ndarray, M: np.ndarray, size_in: Tuple[int, int], size_out: Tuple[int, int],
                    scale: float) -> np.ndarray:
    """uint8 ``(H, W, C)`` -> float32 ``(C, H_out, W_out)`` in [0, 1], output pixel p from input ``M @ p``.

    When shrinking, the image is first resized with PIL's antialiasing filter (bilinear warps
    alias badly below ~0.75x) and ``M`` is composed with that resize.
    """
    H, W = size_in
    if scale < 1.0:
        from PIL import Image

        Wp, Hp = max(1, int(round(W * scale))), max(1, int(round(H * scale)))
        pil = Image.fromarray(raw[:, :, 0] if raw.shape[2] == 1 else raw)
        raw = np.array(pil.resize((Wp, Hp), Image.BILINEAR))
        if raw.ndim == 2:
            raw = raw[:, :, None]
        M = np.diag([Wp / W, Hp / H, 1.0]) @ M
    image = raw.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255.0)
    if tuple(image.shape[1:]) == tuple(size_out) and np.allclose(M, np.eye(3), atol=1e-9):
        return image
    return warp_image(torch.from_numpy(image), M, size_out, mode="bilinear").numpy()
