"""Stanford 12-Scenes -> scene folders ``12scenes_<archive>_<room>/{train,test}`` (as DSAC* names them).

Official data: one zip per archive (``apt1.zip``, ``apt2.zip``, ``office1.zip``, ``office2.zip``),
each holding rooms ``<archive>/<room>/`` with ``info.txt`` (``key = value`` lines;
``m_calibrationColorIntrinsic`` is a row-major 4x4 with fx at [0] and fy at [5]), ``split.txt``
(first line ``sequence0 [frames=N] ...``: the first N frames are the test set, the rest train)
and ``data/frame-XXXXXX.{color.jpg,pose.txt,depth.png}``.

As DSAC*: one focal length per room, the mean of fx and fy, principal point at the image centre.
Frames whose pose file holds non-finite values (the dataset marks tracking failures so, written
as ``-1.#INF``/``inf``/``nan``) are skipped and counted; any other unreadable or non-rigid pose is
an error naming the file.
"""
from __future__ import annotations

import argparse
import os
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ... import geometry
from .. import layout
from . import common

ROOMS = {
    "apt1": ("kitchen", "living"),
    "apt2": ("bed", "kitchen", "living", "luke"),
    "office1": ("gates362", "gates381", "lounge", "manolis"),
    "office2": ("5a", "5b"),
}
SCENES = tuple(f"{a}_{r}" for a, rooms in ROOMS.items() for r in rooms)
URL = "http://graphics.stanford.edu/projects/reloc/data/{archive}.zip"

__all__ = ["SCENES", "ROOMS", "read_info_focal", "read_test_count", "read_pose_or_none", "convert_room",
           "setup_archive", "run", "main", "build_parser"]


def read_info_focal(path: Path) -> float:
    """Mean of the colour camera's fx and fy from a room's ``info.txt``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: calibration file not found")
    entries = {}
    for line in path.read_text(errors="replace").splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            entries[key.strip()] = value.strip()
    if "m_calibrationColorIntrinsic" not in entries:
        raise ValueError(f"{path}: no m_calibrationColorIntrinsic line")
    values = common.parse_float_tokens(entries["m_calibrationColorIntrinsic"].split(), str(path))
    if values is None or values.size != 16:
        raise ValueError(f"{path}: m_calibrationColorIntrinsic must hold 16 finite numbers (a 4x4 matrix)")
    fx, fy = values[0], values[5]
    if fx <= 0 or fy <= 0:
        raise ValueError(f"{path}: focal lengths must be positive, got fx={fx}, fy={fy}")
    return float((fx + fy) / 2.0)


def read_test_count(path: Path) -> int:
    """Number of leading test frames from a room's ``split.txt`` (``sequence0 [frames=N] ...``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found")
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    m = re.search(r"\[frames=(\d+)\]", lines[0]) if lines else None
    if m is None:
        raise ValueError(f"{path}: first line must look like 'sequence0 [frames=N] ...'")
    return int(m.group(1))


def read_pose_or_none(path: Path) -> Optional[np.ndarray]:
    """A 4x4 camera-to-world pose, or None when the file marks an invalid pose with inf/NaN."""
    try:
        tokens = Path(path).read_text(errors="replace").split()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read pose ({exc})") from None
    values = common.parse_float_tokens(tokens, str(path))
    if values is None:
        return None
    if values.size not in (12, 16):
        raise ValueError(f"{path}: expected a 4x4 pose (16 numbers), found {values.size}")
    T = values.reshape(-1, 4)
    if T.shape[0] == 3:
        T = np.vstack([T, [0, 0, 0, 1]])
    return geometry.check_rigid(T, str(path))


def _convert_frame(task: tuple) -> int:
    color, T, focal, out_dir, frame = task
    out_dir = Path(out_dir)
    try:
        from PIL import Image

        with Image.open(color) as im:
            im.verify()
    except Exception as exc:
        raise ValueError(f"{color}: cannot read image ({type(exc).__name__}: {exc})") from None
    common.copy_file(color, out_dir / "rgb" / f"{frame}.color.jpg")
    layout.write_pose(out_dir / "poses" / f"{frame}.pose.txt", T)
    layout.write_calibration(out_dir / "calibration" / f"{frame}.calibration.txt", focal)
    return 1


def convert_room(room_dir: Path, dest: Path, workers: int = 1, name: str = "") -> Dict[str, int]:
    """Convert one extracted room folder into ``dest/{train,test}``; returns counts."""
    room_dir = Path(room_dir)
    focal = read_info_focal(room_dir / "info.txt")
    n_test = read_test_count(room_dir / "split.txt")
    data = room_dir / "data"
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: frame folder not found")
    files = {p.name for p in data.iterdir()}
    tasks: Dict[str, List[tuple]] = {"train": [], "test": []}
    invalid = 0
    for fname in sorted(files):
        m = re.fullmatch(r"frame-(\d+)\.color\.jpg", fname)
        if m is None:
            continue
        frame = f"frame-{m.group(1)}"
        if f"{frame}.pose.txt" not in files:
            raise ValueError(f"{data / fname}: no pose file {frame}.pose.txt beside it")
        T = read_pose_or_none(data / f"{frame}.pose.txt")
        if T is None:
            invalid += 1
            continue
        section = "test" if int(m.group(1)) < n_test else "train"
        tasks[section].append((str(data / fname), T, focal, str(dest / section), frame))
    counts = {"focal": focal, "skipped_invalid_pose": invalid}
    for section, items in tasks.items():
        if not items:
            raise ValueError(f"{room_dir}: no valid {section} frames (split.txt says the first {n_test} are test)")
        desc = f"{name} {section}"
        if workers > 1 and len(items) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                counts[section] = sum(common.progress(pool.map(_convert_frame, items, chunksize=16), desc, len(items)))
        else:
            counts[section] = sum(common.progress(map(_convert_frame, items), desc, len(items)))
    return counts


def setup_archive(archive_name: str, rooms: Sequence[str], out: Path, archives: Optional[Path] = None,
                  download_dir: Optional[Path] = None, source: Optional[Path] = None, workers: int = 1,
                  keep_archives: bool = False, overwrite: bool = False) -> List[Path]:
    """Fetch (or take) one archive and convert the requested rooms of it."""
    out = Path(out)
    todo = [r for r in rooms if overwrite or not common.scene_exists(out, f"12scenes_{archive_name}_{r}")]
    for r in rooms:
        if r not in todo:
            print(f"{out / f'12scenes_{archive_name}_{r}'} is complete already; skipping (use --overwrite)")
    done = []
    prefixes = tuple(f"{archive_name}/{r}/" for r in todo)
    with common.archive_source(out, f"12scenes_{archive_name}", f"{archive_name}.zip",
                               URL.format(archive=archive_name), archives, download_dir, source, keep_archives,
                               members=lambda m: m.replace("\\", "/").startswith(prefixes),
                               fetch=bool(todo)) as (source, _, archive):
        for room in todo:
            room_dir = Path(source) / archive_name / room
            if not room_dir.is_dir() and (Path(source) / room).is_dir():
                room_dir = Path(source) / room
            if not room_dir.is_dir():
                raise FileNotFoundError(f"{room_dir}: room folder not found"
                                        + (f" in {archive}" if archive is not None else ""))
            name = f"12scenes_{archive_name}_{room}"
            info = {"dataset": "12-Scenes", "scene": f"{archive_name}_{room}"}
            with common.staged_scene(out, name, info, overwrite=overwrite) as tmp:
                info.update(convert_room(room_dir, tmp, workers=workers, name=name))
            print(f"{out / name}: {info['train']} train, {info['test']} test frames "
                  f"({info['skipped_invalid_pose']} skipped: invalid pose), focal {info['focal']:.2f}")
            done.append(out / name)
    return done


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="setup_12scenes.py",
        description="Download Stanford 12-Scenes and convert it to scene folders (12scenes_<archive>_<room>/"
                    "train|test).", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_common_arguments(parser, tuple(ROOMS) + SCENES)
    parser.add_argument("--source", type=Path, default=None,
                        help="a folder with already extracted archives (<archive>/<room>/...)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes converting frames in parallel")
    return parser


def _requested_rooms(requested: Sequence[str]) -> Dict[str, List[str]]:
    """Archive -> rooms for ``--scene`` values (``all``, archive names like ``apt1``, rooms like ``apt1_kitchen``)."""
    if not requested or "all" in requested:
        return {a: list(r) for a, r in ROOMS.items()}
    wanted: Dict[str, List[str]] = {}
    for item in requested:
        if item in ROOMS:
            for r in ROOMS[item]:
                wanted.setdefault(item, []).append(r)
        elif item in SCENES:
            a, r = item.split("_", 1)
            wanted.setdefault(a, []).append(r)
        else:
            raise ValueError(f"--scene: unknown 12-Scenes scene '{item}' (choose from all, "
                             f"{', '.join(ROOMS)}, {', '.join(SCENES)})")
    return {a: sorted(set(r), key=ROOMS[a].index) for a, r in wanted.items()}


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` and set up the scenes; raises on errors (see :func:`main`)."""
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    for archive_name, rooms in _requested_rooms(args.scene).items():
        setup_archive(archive_name, rooms, args.out, archives=args.archives, download_dir=args.download_dir,
                      source=args.source, workers=args.workers, keep_archives=args.keep_archives,
                      overwrite=args.overwrite)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of ``datasets/setup_12scenes.py``: errors end as one line on stderr, exit status 1."""
    common.run_main(run, argv)
