"""Atomic file writes: a crash or Ctrl-C never leaves a half-written checkpoint, result or frame.

Every writer goes to a temporary file in the destination folder, flushes it to disk and renames it
over the destination (``os.replace`` is atomic on POSIX and Windows for files on one filesystem).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it to ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_npy(path: PathLike, array: np.ndarray) -> None:
    """``np.save`` atomically."""
    with atomic_open(path, "wb") as fh:
        np.save(fh, array)


def save_npz(path: PathLike, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` atomically."""
    with atomic_open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def save_torch(path: PathLike, obj: Any) -> None:
    """``torch.save`` atomically (checkpoints, DSAC*-style ``.dat`` tensors)."""
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def save_image(path: PathLike, array: np.ndarray) -> None:
    """Save a uint8 (H, W) / (H, W, 3) or uint16 (H, W) image atomically; the format follows the suffix."""
    from PIL import Image

    path = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported image suffix (use .png or .jpg)")
    array = np.asarray(array)
    if array.dtype == np.uint16:
        image = Image.fromarray(array)  # 16-bit greyscale PNG ("I;16")
    elif array.dtype == np.uint8:
        image = Image.fromarray(array)
    else:
        raise ValueError(f"{path}: images must be uint8 or uint16, got {array.dtype}")
    with atomic_open(path, "wb") as fh:
        image.save(fh, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
