"""Shared pieces of the dataset setup scripts: download, archives, staging folders, CLI plumbing.

- :func:`download` resumes an interrupted download with an HTTP ``Range`` request (urllib) and
  shows a tqdm progress bar; the file only gets its final name once complete.
- :func:`fetch_archive` takes an archive from ``--archives DIR`` (offline clusters) or downloads it.
- :func:`extract` unpacks zip and tar archives safely (no paths outside the target) and turns a
  corrupt or truncated archive into one ValueError naming the file.
- :func:`staged_scene` converts into a hidden temporary folder beside the output and renames it
  to its final name at the very end, after writing the completion marker, so that a failed or
  interrupted conversion never leaves a folder that looks complete.
- :func:`run_main` turns ValueError / FileNotFoundError / OSError into one line on stderr and a
  non-zero exit.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np

from ... import geometry, io
from .. import layout

PathLike = Union[str, "os.PathLike[str]"]
T = TypeVar("T")

__all__ = [
    "download", "fetch_archive", "extract", "staged_scene", "copy_file", "progress", "run_main",
    "add_common_arguments", "select", "parse_float_tokens", "scene_exists", "sparse_coordinate_map",
    "archive_kind",
]

CHUNK = 1 << 20


def progress(iterable: Iterable[T], desc: str, total: Optional[int] = None, unit: str = "frame") -> Iterable[T]:
    """A tqdm progress bar on stderr (plain iteration when tqdm is missing)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True,
                disable=None)  # disable=None: no bar when stderr is not a terminal


def download(url: str, dest: PathLike, timeout: float = 60.0, retries: int = 3) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download (``dest + '.part'``).

    A server that ignores the Range header (status 200) restarts the file from scratch. The
    finished file is renamed to ``dest``; an existing ``dest`` is returned as is.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error: Optional[Exception] = None
    for attempt in range(retries):
        have = part.stat().st_size if part.is_file() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "transpose-setup/1.0"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status = getattr(response, "status", 200)
                if have and status != 206:  # no resume support: start over
                    have = 0
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                bar = None
                try:
                    from tqdm import tqdm

                    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                               desc=dest.name, leave=False, disable=None)
                except ImportError:  # pragma: no cover
                    pass
                with open(part, "ab" if have else "wb") as fh:
                    while True:
                        block = response.read(CHUNK)
                        if not block:
                            break
                        fh.write(block)
                        if bar is not None:
                            bar.update(len(block))
                if bar is not None:
                    bar.close()
            size = part.stat().st_size
            if total is not None and size != total:
                raise OSError(f"got {size} of {total} bytes")
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and part.is_file():  # range past the end: the part file is complete
                os.replace(part, dest)
                return dest
            last_error = exc
            if 400 <= exc.code < 500:
                break
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            last_error = exc
        time.sleep(min(2 ** attempt, 10))
    raise OSError(f"download of {url} failed ({last_error}); run again to resume from {part}, or download "
                  f"it yourself and pass its folder with --archives")


def fetch_archive(name: str, url: str, archives: Optional[PathLike], download_dir: PathLike) -> Path:
    """The local archive ``name``: from ``archives`` when given (never downloading), else downloaded."""
    if archives is not None:
        archives = Path(archives)
        if not archives.is_dir():
            raise FileNotFoundError(f"--archives {archives}: not a folder")
        found = archives / name
        if not found.is_file():
            raise FileNotFoundError(f"{found}: archive not found (download it from {url})")
        return found
    return download(url, Path(download_dir) / name)


def _safe_target(root: Path, member: str, archive: Path) -> Path:
    target = (root / member).resolve()
    if root.resolve() not in target.parents and target != root.resolve():
        raise ValueError(f"{archive}: member '{member}' would be written outside the target folder")
    return target


def extract(archive: PathLike, dest: PathLike, members: Optional[Callable[[str], bool]] = None) -> Path:
    """Unpack a zip or tar(.gz/.bz2/.xz) ``archive`` into ``dest`` (optionally only ``members``).

    Raises ValueError naming the archive when it is corrupt, truncated or not an archive.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: archive not found")
    kind = archive_kind(archive)
    dest.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        if kind == "zip":
            if not _zip_ends_properly(archive):
                raise ValueError(f"{archive}: corrupt or truncated zip archive (no end record at its end)")
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if members is not None and not members(info.filename):
                        continue
                    target = _safe_target(dest, info.filename, archive)
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:  # CRC checked on read
                        shutil.copyfileobj(src, dst, CHUNK)
                    written += 1
        elif kind == "tar":
            with tarfile.open(archive) as tf:
                for info in tf:
                    if members is not None and not members(info.name):
                        continue
                    target = _safe_target(dest, info.name, archive)
                    if info.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    if not info.isfile():  # links and devices are never needed by a dataset
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(info)
                    with src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
                    written += 1
        else:
            raise ValueError(f"{archive}: not a zip or tar archive (corrupt or truncated download?)")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma_error(), bz2_error()) as exc:
        raise ValueError(f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from None
    if written == 0 and members is None:
        raise ValueError(f"{archive}: archive holds no files")
    return dest


def _zip_ends_properly(path: Path) -> bool:
    """True when the zip's end-of-central-directory record ends exactly at the end of the file.

    A truncated zip that stores other zips (7-Scenes' sequences) may still contain an inner end
    record near the cut, which ``zipfile`` would happily open as the whole archive.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - (1 << 16) - 22))
        tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return False
    comment_length = int.from_bytes(tail[at + 20:at + 22], "little")
    return at + 22 + comment_length == len(tail)


def archive_kind(path: PathLike) -> str:
    """``'zip'``, ``'tar'`` (plain or gzip/bzip2/xz compressed) or ``'unknown'``, from the file's magic bytes."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00" or head[257:262] == b"ustar":
        return "tar"
    return "unknown"


def lzma_error() -> type:
    import lzma

    return lzma.LZMAError


def bz2_error() -> type:
    return OSError  # bz2 reports corrupt streams as OSError


@contextlib.contextmanager
def archive_source(out_dir: PathLike, label: str, archive_name: str, url: str, archives: Optional[PathLike],
                   download_dir: Optional[PathLike], source: Optional[PathLike] = None, keep_archives: bool = False,
                   members: Optional[Callable[[str], bool]] = None,
                   fetch: bool = True) -> Iterator[Tuple[Optional[Path], Path, Optional[Path]]]:
    """The folder holding a dataset's official archive, extracted: yields ``(source, work, archive)``.

    ``source`` given (an already extracted copy) is used as it is; otherwise the archive is taken
    from ``archives`` or downloaded into ``download_dir`` (default ``out_dir/downloads``) and
    extracted into a private work folder (``members`` filters what is extracted). With
    ``fetch=False`` nothing is fetched and ``source`` may stay None. The work folder is always
    removed; a downloaded archive is deleted after a successful conversion unless ``keep_archives``
    (archives given with ``archives`` are never touched).
    """
    out_dir = Path(out_dir)
    work = out_dir / f".work-{label}-{os.getpid()}"
    archive = None
    try:
        if source is None and fetch:
            archive = fetch_archive(archive_name, url, archives, download_dir or out_dir / "downloads")
            extract(archive, work, members=members)
            source = work
        yield (Path(source) if source is not None else None), work, archive
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # reached only when the conversion succeeded (an exception leaves the generator above)
    if archive is not None and archives is None and not keep_archives:
        archive.unlink(missing_ok=True)


def scene_exists(out_dir: PathLike, name: str) -> bool:
    """True when ``out_dir/name`` was fully converted before."""
    return layout.is_complete(Path(out_dir) / name)


@contextlib.contextmanager
def staged_scene(out_dir: PathLike, name: str, info: Optional[dict] = None,
                 overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to convert ``name`` into; on success it becomes ``out_dir/name``.

    The completion marker is written into the temporary folder last, then the folder is renamed,
    so ``out_dir/name`` only ever appears complete. On any error the temporary folder is removed.
    An existing *complete* scene raises FileExistsError unless ``overwrite``; an incomplete one
    (left by some other tool) is replaced.
    """
    out_dir = Path(out_dir)
    final = out_dir / name
    if final.exists() and layout.is_complete(final) and not overwrite:
        raise FileExistsError(f"{final} exists and is complete (use --overwrite to convert again)")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        layout.mark_complete(tmp, info or {})
        if final.exists():
            old = out_dir / f".{name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_file(src: PathLike, dst: PathLike) -> None:
    """Copy ``src`` to ``dst`` atomically (images kept byte for byte: no re-encoding)."""
    try:
        with open(src, "rb") as fin, io.atomic_open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, CHUNK)
    except FileNotFoundError:
        raise FileNotFoundError(f"{src}: file not found") from None


def parse_float_tokens(tokens: Sequence[str], name: str) -> Optional[np.ndarray]:
    """Floats from text tokens; None when any is infinite or NaN (including MSVC's ``-1.#INF``,
    ``1.#IND``, ``1.#QNAN``, as some dataset pose files hold); ValueError naming ``name`` otherwise."""
    values: List[float] = []
    for tok in tokens:
        try:
            v = float(tok)
        except ValueError:
            if any(s in tok.upper() for s in ("#INF", "#IND", "#QNAN", "#SNAN", "INF", "NAN")):
                return None
            raise ValueError(f"{name}: cannot parse '{tok}' as a number") from None
        if not np.isfinite(v):
            return None
        values.append(v)
    return np.asarray(values, dtype=np.float64)


def select(requested: Optional[Sequence[str]], available: Sequence[str], what: str = "--scene") -> List[str]:
    """The requested names (``all`` or None: every one); ValueError listing the choices otherwise."""
    if not requested or "all" in requested:
        return list(available)
    unknown = [r for r in requested if r not in available]
    if unknown:
        raise ValueError(f"{what}: unknown {', '.join(unknown)} (choose from: all, {', '.join(available)})")
    return [a for a in available if a in requested]


def add_common_arguments(parser: argparse.ArgumentParser, scenes: Sequence[str]) -> None:
    """``--scene``, ``--out``, ``--archives``, ``--download_dir``, ``--keep_archives``, ``--overwrite``."""
    parser.add_argument("--scene", nargs="+", default=["all"], metavar="NAME",
                        help=f"scenes to set up: all, or some of {', '.join(scenes)}")
    parser.add_argument("--out", type=Path, default=layout.DEFAULT_ROOT,
                        help="output folder (scene folders are created inside)")
    parser.add_argument("--archives", type=Path, default=None,
                        help="folder holding the already downloaded official archives (nothing is downloaded)")
    parser.add_argument("--download_dir", type=Path, default=None,
                        help="where downloads go (default: OUT/downloads); interrupted downloads resume")
    parser.add_argument("--keep_archives", action="store_true",
                        help="keep downloaded archives after conversion (always kept with --archives)")
    parser.add_argument("--overwrite", action="store_true", help="convert again scenes that are already complete")


def run_main(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> None:
    """Run a setup ``main`` and exit; user errors become one line on stderr and exit status 1."""
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("interrupted (partial output removed; downloads resume on the next run)", file=sys.stderr)
        sys.exit(130)
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)


def sparse_coordinate_map(points_world: np.ndarray, T_c2w: np.ndarray, K: np.ndarray, size: Tuple[int, int],
                          stride: int = 8, max_depth: float = 1000.0) -> np.ndarray:
    """Scene coordinates of sparse 3D points z-buffered into the cells of an image.

    Each point in front of the camera (``0 < z <= max_depth``) is projected; the cell it falls
    in, ``(floor(v / stride), floor(u / stride))``, keeps the nearest point. Cells without a
    point stay zero (DSAC*'s "no label").

    Args:
        points_world: ``(N, 3)`` world points.
        T_c2w: ``(4, 4)`` camera-to-world pose.
        K: ``(3, 3)`` intrinsics of the image.
        size: ``(H, W)`` of the image.

    Returns:
        float32 ``(3, ceil(H / stride), ceil(W / stride))``.
    """
    H, W = size
    h, w = -(-H // stride), -(-W // stride)
    out = np.zeros((3, h, w), dtype=np.float32)
    pts = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return out
    uv, z = geometry.project(pts, T_c2w, K)
    ok = np.isfinite(z) & (z > 0) & (z <= max_depth) & np.all(np.isfinite(uv), axis=1)
    ok &= (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    pts, z, uv = pts[ok], z[ok], uv[ok]
    cell = (np.floor(uv[:, 1] / stride).astype(np.int64) * w + np.floor(uv[:, 0] / stride).astype(np.int64))
    nearest = np.full(h * w, np.inf)
    np.minimum.at(nearest, cell, z)
    win = z == nearest[cell]  # the nearest point of its cell (exact ties: either, both are as near)
    flat = out.reshape(3, -1)
    flat[:, cell[win]] = pts[win].T
    return out
