"""Microsoft 7-Scenes -> scene folders ``7scenes_<scene>/{train,test}`` (DSAC* names and splits).

Official data: one zip per scene (``chess.zip`` ...) holding ``<scene>/TrainSplit.txt``,
``TestSplit.txt`` (lines ``sequence1``, ``sequence2``, ... naming ``seq-01``, ``seq-02``) and one
zip per sequence (``seq-01.zip``: ``seq-01/frame-000000.color.png``, ``.depth.png``, ``.pose.txt``).

The archive's poses and depth maps belong to the Kinect's *depth* sensor (f = 585 px, principal
point at the centre), not to the colour camera (f = 525 px). By default (``--poses calibrated``)
both are registered to the colour camera with the published depth-to-colour calibration (LIRIS
Kinect calibration, the values ACE's setup script uses):

- pose:  ``T_color_c2w = T_depth_c2w @ inv(T_color_from_depth)``
- depth: each depth pixel is lifted with the depth intrinsics, moved by ``T_color_from_depth``,
  projected with the colour intrinsics and z-buffered (nearest surface wins).

``--poses original`` keeps the archive's poses (DSAC*-compatible output) and only re-projects the
depth from the depth sensor's focal length to the colour camera's (same centre and orientation,
as DSAC* assumes), so that depth, pose and image stay consistent with each other.
"""
from __future__ import annotations

import argparse
import os
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ... import geometry
from .. import layout
from . import common

SCENES = ("chess", "fire", "heads", "office", "pumpkin", "redkitchen", "stairs")
URL = "http://download.microsoft.com/download/2/8/5/28564B23-0828-408F-8631-23B1EFF1DAC8/{scene}.zip"
COLOR_FOCAL = 525.0
DEPTH_FOCAL = 585.0
WIDTH, HEIGHT = 640, 480
SPLITS = (("TrainSplit.txt", "train"), ("TestSplit.txt", "test"))

#: Rigid transform taking points from the depth sensor's frame to the colour camera's frame
#: (Kinect calibration published by LIRIS, as used by ACE's 7-Scenes setup).
COLOR_FROM_DEPTH = np.array([
    [9.9996518012567637e-01, 2.6765126468950343e-03, -7.9041012313000904e-03, -2.5558943178152542e-02],
    [-2.7409311281316700e-03, 9.9996302803027592e-01, -8.1504520778013286e-03, 1.0109636268061706e-04],
    [7.8819942130445332e-03, 8.1718328771890631e-03, 9.9993554558014031e-01, 2.0318321729487039e-03],
    [0.0, 0.0, 0.0, 1.0],
])

__all__ = ["SCENES", "COLOR_FROM_DEPTH", "read_split", "register_depth", "color_pose", "convert_scene",
           "setup_scene", "run", "main", "build_parser"]


def read_split(path: Path) -> List[str]:
    """Sequence folder names (``seq-01`` ...) from a split file holding ``sequence1`` lines."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: split file not found")
    seqs = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        m = re.fullmatch(r"sequence(\d+)", line, flags=re.IGNORECASE)
        if m is None:
            raise ValueError(f"{path}:{n}: expected a line like 'sequence1', got '{line}'")
        seqs.append(f"seq-{int(m.group(1)):02d}")
    if not seqs:
        raise ValueError(f"{path}: split file lists no sequences")
    return seqs


def _sensor_transform(poses: str) -> np.ndarray:
    if poses == "calibrated":
        return COLOR_FROM_DEPTH
    if poses == "original":
        return np.eye(4)
    raise ValueError(f"--poses must be 'calibrated' or 'original', got '{poses}'")


def color_pose(T_depth_c2w: np.ndarray, poses: str = "calibrated") -> np.ndarray:
    """Camera-to-world pose of the colour camera from the archive's (depth sensor) pose."""
    return np.asarray(T_depth_c2w, dtype=np.float64) @ geometry.invert_pose(_sensor_transform(poses))


def register_depth(depth: np.ndarray, color_from_depth: np.ndarray, depth_focal: float = DEPTH_FOCAL,
                   color_focal: float = COLOR_FOCAL, color_size: Tuple[int, int] = (HEIGHT, WIDTH)) -> np.ndarray:
    """Re-project a depth map ``(h, w)`` (metres, 0 invalid) of the depth sensor into the colour camera.

    Every valid depth pixel (centre ``(j + 0.5, i + 0.5)``, principal point at the image centre) is
    lifted to 3D, transformed by ``color_from_depth (4, 4)``, projected with ``color_focal`` and
    written to the colour pixel it falls in; where several land in one pixel the nearest wins.

    Returns:
        ``color_size`` float64 depth (z in the colour camera, metres), 0 where nothing landed.
    """
    depth = np.asarray(depth, dtype=np.float64)
    h, w = depth.shape
    H, W = color_size
    K_d = geometry.intrinsics_from_focal(depth_focal, w, h)
    K_c = geometry.intrinsics_from_focal(color_focal, W, H)
    valid = np.isfinite(depth) & (depth > 0)
    rows, cols = np.nonzero(valid)
    z_d = depth[rows, cols]
    x_d = (cols + 0.5 - K_d[0, 2]) / K_d[0, 0] * z_d
    y_d = (rows + 0.5 - K_d[1, 2]) / K_d[1, 1] * z_d
    # column-wise affine transform: ~10x faster than an (N, 3) @ (3, 3) product on busy machines
    M = np.asarray(color_from_depth, dtype=np.float64)
    x = M[0, 0] * x_d + M[0, 1] * y_d + M[0, 2] * z_d + M[0, 3]
    y = M[1, 0] * x_d + M[1, 1] * y_d + M[1, 2] * z_d + M[1, 3]
    z = M[2, 0] * x_d + M[2, 1] * y_d + M[2, 2] * z_d + M[2, 3]
    front = z > 1e-6
    x, y, z = x[front], y[front], z[front]
    col = np.floor(K_c[0, 0] * x / z + K_c[0, 2]).astype(np.int64)
    row = np.floor(K_c[1, 1] * y / z + K_c[1, 2]).astype(np.int64)
    inside = (col >= 0) & (col < W) & (row >= 0) & (row < H)
    # z-buffer: the nearest surface landing in a pixel wins
    out = np.full(H * W, np.inf)
    np.minimum.at(out, row[inside] * W + col[inside], z[inside])
    out[~np.isfinite(out)] = 0.0
    return out.reshape(H, W)


def _find_scene_root(folder: Path, scene: str) -> Path:
    """The folder holding TrainSplit.txt (``folder`` itself or ``folder/<scene>``)."""
    for candidate in (folder, folder / scene):
        if (candidate / "TrainSplit.txt").is_file() or (candidate / "TestSplit.txt").is_file():
            return candidate
    raise FileNotFoundError(f"{folder}: no TrainSplit.txt / TestSplit.txt found (not a 7-Scenes {scene} folder?)")


def _sequence_dir(root: Path, seq: str, work: Optional[Path]) -> Path:
    """``root/seq``, extracting ``root/seq.zip`` into ``work`` first when the archive is still packed."""
    if (root / seq).is_dir():
        return root / seq
    packed = root / f"{seq}.zip"
    if packed.is_file():
        target = (work or root)
        common.extract(packed, target)
        if work is not None and work in packed.parents:
            packed.unlink()  # our own extracted copy: free the space right away
        if (target / seq).is_dir():
            return target / seq
        raise ValueError(f"{packed}: archive does not contain the folder {seq}/")
    raise FileNotFoundError(f"{root}: sequence {seq} named in the split file is missing (no {seq}/ or {seq}.zip)")


def _convert_frame(task: tuple) -> int:
    """Convert one frame (a top-level function so that worker processes can run it)."""
    color_path, pose_path, depth_path, out_dir, key, poses, with_depth = task
    out_dir = Path(out_dir)
    T = layout.read_pose(pose_path)  # ValueError naming the file when not rigid
    layout.write_pose(out_dir / "poses" / f"{key}.pose.txt", color_pose(T, poses))
    layout.write_calibration(out_dir / "calibration" / f"{key}.calibration.txt", COLOR_FOCAL)
    ext = "".join(Path(color_path).suffixes[-2:])  # .color.png (official) or .color.jpg
    try:
        from PIL import Image

        with Image.open(color_path) as im:
            im.verify()
            size = im.size
    except Exception as exc:
        raise ValueError(f"{color_path}: cannot read image ({type(exc).__name__}: {exc})") from None
    if size != (WIDTH, HEIGHT):
        raise ValueError(f"{color_path}: expected a {WIDTH}x{HEIGHT} colour image, got {size[0]}x{size[1]}")
    common.copy_file(color_path, out_dir / "rgb" / f"{key}{ext}")
    if with_depth:
        if depth_path is None:
            raise FileNotFoundError(f"{color_path}: no depth image beside it (frame-*.depth.png)")
        depth = layout.read_depth(depth_path)
        registered = register_depth(depth, _sensor_transform(poses))
        layout.write_depth(out_dir / "depth" / f"{key}.depth.png", registered)
    return 1


def _frame_tasks(root: Path, seq_dir: Path, seq: str, out_dir: Path, poses: str, with_depth: bool) -> List[tuple]:
    files = {p.name: p for p in seq_dir.iterdir() if p.is_file()}
    tasks = []
    for name in sorted(files):
        m = re.fullmatch(r"(frame-\d+)\.color\.(png|jpg)", name)
        if m is None:
            continue
        frame = m.group(1)
        pose = files.get(f"{frame}.pose.txt")
        if pose is None:
            raise ValueError(f"{files[name]}: no pose file {frame}.pose.txt beside it")
        tasks.append((str(files[name]), str(pose), str(files[f"{frame}.depth.png"]) if f"{frame}.depth.png" in files
                      else None, str(out_dir), f"{seq}-{frame}", poses, with_depth))
    if not tasks:
        raise ValueError(f"{seq_dir}: no frame-*.color.png images")
    return tasks


def convert_scene(source: Path, scene: str, dest: Path, poses: str = "calibrated", depth: bool = True,
                  workers: int = 1, work: Optional[Path] = None) -> Dict[str, int]:
    """Convert an extracted 7-Scenes scene folder into ``dest/{train,test}``; returns frames per section.

    ``source`` is the folder with ``TrainSplit.txt`` (or its parent); packed ``seq-XX.zip`` files
    are extracted into ``work`` (default: beside them).
    """
    _sensor_transform(poses)
    root = _find_scene_root(Path(source), scene)
    counts = {}
    for split_file, section in SPLITS:
        seqs = read_split(root / split_file)
        tasks: List[tuple] = []
        for seq in seqs:
            tasks += _frame_tasks(root, _sequence_dir(root, seq, work), seq, dest / section, poses, depth)
        desc = f"7scenes_{scene} {section}"
        if workers > 1 and len(tasks) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                done = sum(common.progress(pool.map(_convert_frame, tasks, chunksize=16), desc, len(tasks)))
        else:
            done = sum(common.progress(map(_convert_frame, tasks), desc, len(tasks)))
        counts[section] = done
    return counts


def setup_scene(scene: str, out: Path, archives: Optional[Path] = None, download_dir: Optional[Path] = None,
                source: Optional[Path] = None, poses: str = "calibrated", depth: bool = True, workers: int = 1,
                keep_archives: bool = False, overwrite: bool = False) -> Path:
    """Fetch (or take) one scene's archive, convert it, and return the finished scene folder."""
    if scene not in SCENES:
        raise ValueError(f"--scene: unknown 7-Scenes scene '{scene}' (choose from {', '.join(SCENES)})")
    out = Path(out)
    name = f"7scenes_{scene}"
    if common.scene_exists(out, name) and not overwrite:
        print(f"{out / name} is complete already; skipping (use --overwrite to convert again)")
        return out / name
    with common.archive_source(out, name, f"{scene}.zip", URL.format(scene=scene), archives, download_dir,
                               source, keep_archives) as (src, work, _):
        info = {"dataset": "7-Scenes", "scene": scene, "poses": poses, "depth": "registered" if depth else "none",
                "color_focal": COLOR_FOCAL}
        with common.staged_scene(out, name, info, overwrite=overwrite) as tmp:
            info.update(convert_scene(src, scene, tmp, poses=poses, depth=depth, workers=workers, work=work))
    print(f"{out / name}: {info.get('train', 0)} train, {info.get('test', 0)} test frames")
    return out / name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="setup_7scenes.py",
        description="Download Microsoft 7-Scenes and convert it to scene folders (7scenes_<scene>/train|test). "
                    "Please check the dataset's licence (Microsoft Research, non-commercial) before use.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_common_arguments(parser, SCENES)
    parser.add_argument("--poses", choices=("calibrated", "original"), default="calibrated",
                        help="calibrated: register poses and depth to the colour camera; "
                             "original: the archive's depth-sensor poses (DSAC*-compatible)")
    parser.add_argument("--depth", choices=("registered", "none"), default="registered",
                        help="write depth maps registered to the colour image (uint16 mm PNG)")
    parser.add_argument("--source", type=Path, default=None,
                        help="an already extracted scene folder (with TrainSplit.txt); needs exactly one --scene")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes converting frames in parallel")
    return parser


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` and set up the scenes; raises on errors (see :func:`main`)."""
    args = build_parser().parse_args(argv)
    scenes = common.select(args.scene, SCENES)
    if args.source is not None and len(scenes) != 1:
        raise ValueError("--source needs exactly one --scene")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    for scene in scenes:
        setup_scene(scene, args.out, archives=args.archives, download_dir=args.download_dir, source=args.source,
                    poses=args.poses, depth=args.depth == "registered", workers=args.workers,
                    keep_archives=args.keep_archives, overwrite=args.overwrite)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of ``datasets/setup_7scenes.py``: errors end as one line on stderr, exit status 1."""
    common.run_main(run, argv)
