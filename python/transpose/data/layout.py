"""The scene folder layout (DSAC*-compatible, with CrossLoc sections): paths, frame keys, readers, writers.

::

    datasets/<scene>/<section>/rgb/<frame>.png|.jpg           colour image
                              /poses/<frame>.txt              4x4 camera-to-world, metres
                              /calibration/<frame>.txt        one focal length, or a 3x3 K
                              /depth/<frame>.png              uint16 millimetres (0 and 65535 invalid),
                                    <frame>.dat|.npy          or float metres (any resolution)
                              /init/<frame>.dat|.npy|.npz     sparse coordinates (3, H/8, W/8), zeros = none
                              /normal/<frame>.dat|.npy        unit normals (3, h, w), world frame

Section names are free (``train``, ``test``, ``train_sim``, ``test_real``, ...); a folder named
``training`` is read as ``train`` (DSAC*'s Cambridge layout). Frames are matched across folders by
their *frame key*: the file name without its extension and without a DSAC*-style role suffix
(``seq-01-frame-000000.color.png``, ``seq-01-frame-000000.pose.txt`` and ``seq-01-frame-000000.txt``
all have the key ``seq-01-frame-000000``), never by sorted position.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from .. import geometry, io

PathLike = Union[str, "os.PathLike[str]"]

#: Sub-folders of a section and what they hold.
FOLDERS = ("rgb", "poses", "calibration", "depth", "init", "normal")
#: Section folder names read under another name.
SECTION_ALIASES = {"training": "train"}
#: Role suffixes stripped from a file stem to get its frame key.
ROLE_SUFFIXES = (".color", ".pose", ".depth", ".calibration", ".init", ".normal", ".rgb")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
DEFAULT_ROOT = Path("datasets")


def frame_key(filename: PathLike) -> str:
    """The key that matches one frame's files across folders (see the module docstring)."""
    name = Path(filename).name
    stem = name.rsplit(".", 1)[0] if "." in name else name
    for suffix in ROLE_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def resolve_scene(scene: PathLike, root: PathLike = DEFAULT_ROOT) -> Path:
    """The scene folder for ``scene``: a path to a folder, or a folder name under ``root`` (as DSAC*)."""
    path = Path(scene)
    if path.is_dir():
        return path
    candidate = Path(root) / path
    if candidate.is_dir():
        return candidate
    available = sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
    hint = f"; scenes under {root}/: {', '.join(available)}" if available else \
        f"; {root}/ holds no scenes (run a datasets/setup_*.py script first)"
    raise FileNotFoundError(f"scene '{scene}' not found (neither a folder nor {candidate}){hint}")


def list_sections(scene_dir: PathLike) -> List[str]:
    """Section names of a scene folder (``training`` reported as ``train``)."""
    scene_dir = Path(scene_dir)
    names = []
    for p in sorted(scene_dir.iterdir()):
        if p.is_dir() and (p / "rgb").is_dir():
            names.append(SECTION_ALIASES.get(p.name, p.name))
    return names


def section_dir(scene_dir: PathLike, section: str) -> Path:
    """Folder of ``section`` in ``scene_dir``; ``train`` also finds a folder named ``training``."""
    scene_dir = Path(scene_dir)
    candidates = [scene_dir / section] + [scene_dir / alias for alias, name in SECTION_ALIASES.items()
                                          if name == section]
    for c in candidates:
        if c.is_dir():
            return c
    have = list_sections(scene_dir) if scene_dir.is_dir() else []
    raise FileNotFoundError(f"section '{section}' not found in {scene_dir}"
                            + (f" (sections: {', '.join(have)})" if have else " (no sections with an rgb/ folder)"))


def index_folder(folder: PathLike, exts: Optional[tuple] = None) -> Dict[str, Path]:
    """Map frame key -> file for every file in ``folder`` (empty when the folder is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    out: Dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if exts is not None and p.suffix.lower() not in exts:
            continue
        key = frame_key(p.name)
        if key in out:
            raise ValueError(f"{folder}: two files for frame '{key}': {out[key].name} and {p.name}")
        out[key] = p
    return out


# --------------------------------------------------------------------------- readers

def read_pose(path: PathLike) -> np.ndarray:
    """A 4x4 camera-to-world pose from a text file; ValueError naming the file when it is not rigid."""
    try:
        T = np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read a 4x4 pose ({exc})") from None
    if T.shape == (3, 4):
        T = np.vstack([T, [0.0, 0.0, 0.0, 1.0]])
    return geometry.check_rigid(T, str(path))


def read_calibration(path: PathLike, width: int, height: int) -> np.ndarray:
    """K from a calibration file holding one focal length (principal point at the centre) or a 3x3 K."""
    try:
        values = np.loadtxt(path, dtype=np.float64).reshape(-1)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read calibration ({exc})") from None
    if values.size == 1:
        K = geometry.intrinsics_from_focal(float(values[0]), width, height)
    elif values.size == 9:
        K = values.reshape(3, 3)
    else:
        raise ValueError(f"{path}: calibration must hold one focal length or a 3x3 K, found {values.size} numbers")
    return geometry.check_intrinsics(K, str(path))


def read_image(path: PathLike, gray: bool = False) -> np.ndarray:
    """uint8 image ``(H, W, 3)`` (or ``(H, W)`` when ``gray``); ValueError naming the file when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if gray else "RGB")
            return np.asarray(im).copy()
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from None


def _load_tensor_file(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    try:
        if suffix == ".dat":  # DSAC* / CrossLoc: torch.save of a tensor
            import torch

            return torch.load(path, map_location="cpu", weights_only=True).numpy()
        if suffix == ".npy":
            return np.load(path)
        if suffix == ".npz":
            with np.load(path) as z:
                return z[z.files[0]]
    except Exception as exc:  # corrupt files: any loader error becomes one clear line
        raise ValueError(f"{path}: cannot read array ({type(exc).__name__}: {exc})") from None
    raise ValueError(f"{path}: unsupported array file (use .dat, .npy or .npz)")


def read_depth(path: PathLike) -> np.ndarray:
    """Depth in metres, float32 ``(H, W)``; invalid pixels are 0.

    ``.png``: uint16 millimetres, 0 and 65535 invalid. ``.dat/.npy/.npz``: float metres, <= 0 or
    non-finite invalid.
    """
    path = Path(path)
    if path.suffix.lower() == ".png":
        from PIL import Image

        try:
            with Image.open(path) as im:
                raw = np.asarray(im)
        except OSError as exc:
            raise ValueError(f"{path}: cannot read depth image ({exc})") from None
        if raw.dtype not in (np.uint16, np.int32, np.uint8) or raw.ndim != 2:
            raise ValueError(f"{path}: depth PNG must be single-channel 16-bit, got {raw.dtype} {raw.shape}")
        raw = raw.astype(np.float64)
        depth = np.where((raw > 0) & (raw < 65535), raw / 1000.0, 0.0)
    else:
        depth = _load_tensor_file(path).astype(np.float64).squeeze()
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0)
    if depth.ndim != 2:
        raise ValueError(f"{path}: depth must be 2-D, got shape {depth.shape}")
    return depth.astype(np.float32)


def read_coords(path: PathLike) -> np.ndarray:
    """Coordinate map float32 ``(3, h, w)`` (``init/`` files); cells of all zeros mean no label."""
    arr = _load_tensor_file(Path(path)).astype(np.float32)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"{path}: coordinate map must have shape (3, h, w), got {arr.shape}")
    return arr


def read_normals(path: PathLike) -> np.ndarray:
    """Normal map float32 ``(3, h, w)``; zero vectors mean no label."""
    return read_coords(path)


# --------------------------------------------------------------------------- writers

def write_pose(path: PathLike, T_c2w: np.ndarray) -> None:
    """Write a 4x4 camera-to-world pose as text (checked rigid first)."""
    T = geometry.check_rigid(T_c2w, str(path))
    io.write_text(path, "\n".join(" ".join(f"{v:.9g}" for v in row) for row in T) + "\n")


def write_calibration(path: PathLike, K: Union[float, np.ndarray]) -> None:
    """Write one focal length (a float) or a full 3x3 K."""
    if np.ndim(K) == 0:
        io.write_text(path, f"{float(K):.9g}\n")
    else:
        K = geometry.check_intrinsics(K, str(path))
        io.write_text(path, "\n".join(" ".join(f"{v:.9g}" for v in row) for row in K) + "\n")


def write_depth(path: PathLike, depth_m: np.ndarray) -> None:
    """Depth in metres -> uint16 millimetre PNG (invalid / out of range -> 0), or float32 metres when
    ``path`` ends in ``.npy`` (invalid -> 0)."""
    d = np.asarray(depth_m, dtype=np.float64)
    if Path(path).suffix.lower() == ".npy":
        io.save_npy(path, np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32))
        return
    mm = np.where(np.isfinite(d) & (d > 0), np.round(d * 1000.0), 0.0)
    mm = np.where(mm < 65535, mm, 0).astype(np.uint16)
    io.save_image(path, mm)


def write_frame(scene_dir: PathLike, section: str, key: str, *, rgb: Optional[np.ndarray] = None,
                pose: Optional[np.ndarray] = None, K: Union[None, float, np.ndarray] = None,
                depth: Optional[np.ndarray] = None, init: Optional[np.ndarray] = None,
                normal: Optional[np.ndarray] = None, rgb_ext: str = ".png", depth_ext: str = ".png") -> None:
    """Write whatever is given of one frame into ``scene_dir/section/<folder>/<key>.<ext>``, atomically.

    Args:
        rgb: uint8 ``(H, W, 3)`` or ``(H, W)``.
        pose: 4x4 camera-to-world.
        K: a focal length or a 3x3 intrinsics matrix.
        depth: ``(H, W)`` metres (saved as uint16 mm PNG, or with ``depth_ext='.npy'`` as float32
            metres: aerial scenes are deeper than the 65.5 m a uint16 mm PNG holds).
        init: coordinates ``(3, h, w)`` float (saved as float32 ``.npy``; zeros = no label).
        normal: normals ``(3, h, w)`` float (saved as float16 ``.npy``).
    """
    base = Path(scene_dir) / section
    if rgb is not None:
        io.save_image(base / "rgb" / f"{key}{rgb_ext}", np.asarray(rgb, dtype=np.uint8))
    if pose is not None:
        write_pose(base / "poses" / f"{key}.txt", pose)
    if K is not None:
        write_calibration(base / "calibration" / f"{key}.txt", K)
    if depth is not None:
        write_depth(base / "depth" / f"{key}{depth_ext}", depth)
    if init is not None:
        io.save_npy(base / "init" / f"{key}.npy", np.asarray(init, dtype=np.float32))
    if normal is not None:
        io.save_npy(base / "normal" / f"{key}.npy", np.asarray(normal, dtype=np.float16))


COMPLETE_MARKER = ".complete"


def mark_complete(scene_dir: PathLike, info: Optional[dict] = None) -> None:
    """Mark a converted/rendered scene as complete (setup scripts write it last)."""
    io.write_json(Path(scene_dir) / COMPLETE_MARKER, info or {})


def is_complete(scene_dir: PathLike) -> bool:
    """True when the scene folder was fully written (a partial output never looks complete)."""
    return (Path(scene_dir) / COMPLETE_MARKER).is_file()
