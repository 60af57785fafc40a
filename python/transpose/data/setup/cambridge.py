"""Cambridge Landmarks -> scene folders ``Cambridge_<Scene>/{train,test}`` (as DSAC* sets them up).

Official data: one zip per scene (``KingsCollege.zip`` ...) holding ``<Scene>/dataset_train.txt``,
``dataset_test.txt`` (three header lines, then ``seqN/frameXXXXX.png X Y Z W P Q R``: camera
centre and the world-to-camera rotation quaternion w, x, y, z), ``reconstruction.nvm`` (the
VisualSFM reconstruction: per image its focal length, and the 3D points with the list of images
that measured them) and the images (``seqN/frameXXXXX.png``, 1920x1080).

Per frame: the pose from ``dataset_*.txt``, the focal length from the NVM (principal point at the
image centre), the image resized to 480 px height (focal rescaled by the same factor), and a
sparse ``init/`` coordinate map made by projecting the SfM points the image measured into it and
keeping the nearest point of each 8x8 cell (z-buffer), saved as a DSAC*-style ``.dat`` tensor.
Frames missing from the NVM, and poses with a coordinate beyond 10 km (a few outliers in the
official files, which DSAC* skips too), are skipped and counted.
"""
from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ... import geometry, io
from .. import layout
from ..poselists import read_cambridge_list
from . import common

SCENES = ("KingsCollege", "OldHospital", "ShopFacade", "StMarysChurch", "GreatCourt")
URLS = {
    "KingsCollege": "https://www.repository.cam.ac.uk/bitstream/handle/1810/251342/KingsCollege.zip",
    "OldHospital": "https://www.repository.cam.ac.uk/bitstream/handle/1810/251340/OldHospital.zip",
    "ShopFacade": "https://www.repository.cam.ac.uk/bitstream/handle/1810/251336/ShopFacade.zip",
    "StMarysChurch": "https://www.repository.cam.ac.uk/bitstream/handle/1810/251294/StMarysChurch.zip",
    "GreatCourt": "https://www.repository.cam.ac.uk/bitstream/handle/1810/251291/GreatCourt.zip",
}
TARGET_HEIGHT = 480
STRIDE = 8
MAX_COORDINATE = 10000.0  # metres; larger pose coordinates are outliers
MAX_POINT_DEPTH = 1000.0  # metres; farther SfM points are dropped from init/ (as DSAC*)

__all__ = ["SCENES", "NVM", "read_nvm", "read_dataset_file", "convert_scene", "setup_scene", "run", "main",
           "build_parser"]


@dataclass
class NVM:
    """A VisualSFM ``.nvm`` reconstruction.

    Attributes:
        names: image file names, one per camera.
        focals: ``(C,)`` focal lengths in pixels of the original images.
        points: ``(P, 3)`` 3D points.
        obs_camera, obs_point: ``(M,)`` camera index and point index of every measurement.
    """

    names: List[str]
    focals: np.ndarray
    points: np.ndarray
    obs_camera: np.ndarray
    obs_point: np.ndarray

    def points_seen_by(self) -> Dict[int, np.ndarray]:
        """Camera index -> indices of the points it measured."""
        order = np.argsort(self.obs_camera, kind="stable")
        cams, starts = np.unique(self.obs_camera[order], return_index=True)
        bounds = list(starts[1:]) + [len(order)]
        return {int(c): self.obs_point[order[s:e]] for c, s, e in zip(cams, starts, bounds)}


def read_nvm(path: Path) -> NVM:
    """Read an NVM_V3 file (first model only); ValueError naming the file and line on bad content."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: reconstruction file not found")
    lines = path.read_text(errors="replace").splitlines()
    n = 0

    def next_line() -> Tuple[int, List[str]]:
        nonlocal n
        while n < len(lines):
            toks = lines[n].split()
            n += 1
            if toks:
                return n, toks
        raise ValueError(f"{path}: unexpected end of file")

    no, toks = next_line()
    if not toks[0].startswith("NVM_V3"):
        raise ValueError(f"{path}:{no}: not an NVM_V3 file (first line '{' '.join(toks)}')")
    try:
        no, toks = next_line()
        num_cams = int(toks[0])
        names, focals = [], []
        for _ in range(num_cams):
            no, toks = next_line()
            if len(toks) < 10:
                raise ValueError(f"{path}:{no}: camera line needs 'name focal qw qx qy qz cx cy cz k 0'")
            names.append(toks[0])
            focals.append(float(toks[1]))
        no, toks = next_line()
        num_pts = int(toks[0])
        points = np.empty((num_pts, 3))
        obs_cam: List[int] = []
        obs_pt: List[int] = []
        for p in range(num_pts):
            no, toks = next_line()
            points[p] = (float(toks[0]), float(toks[1]), float(toks[2]))
            m = int(toks[6])
            if len(toks) < 7 + 4 * m:
                raise ValueError(f"{path}:{no}: point line lists {m} measurements but holds fewer")
            obs_cam.extend(int(t) for t in toks[7:7 + 4 * m:4])
            obs_pt.extend([p] * m)
    except (IndexError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}:{no}: malformed NVM line ({exc})") from None
    obs_camera = np.asarray(obs_cam, dtype=np.int64)
    if len(obs_camera) and (obs_camera.min() < 0 or obs_camera.max() >= num_cams):
        raise ValueError(f"{path}: a measurement refers to a camera index outside 0..{num_cams - 1}")
    return NVM(names, np.asarray(focals), points, obs_camera, np.asarray(obs_pt, dtype=np.int64))


def read_dataset_file(path: Path) -> List[Tuple[str, np.ndarray]]:
    """``(image path, T_c2w (4, 4))`` for each line of a Cambridge ``dataset_*.txt`` (3 header lines).

    Parsed by :func:`transpose.data.poselists.read_cambridge_list` (the one reader of this format):
    ValueError naming the file and line for malformed, non-finite or non-unit rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found")
    listed = read_cambridge_list(str(path))
    return list(zip(listed.image_paths, listed.poses_c2w))


def _find_root(folder: Path, scene: str) -> Path:
    for candidate in (folder, folder / scene):
        if (candidate / "reconstruction.nvm").is_file():
            return candidate
    raise FileNotFoundError(f"{folder}: no reconstruction.nvm found (not a Cambridge {scene} folder?)")


def _convert_frame(task: tuple) -> int:
    image_path, key, T_c2w, focal, points, out_dir, height = task
    import torch
    from PIL import Image

    out_dir = Path(out_dir)
    if not Path(image_path).is_file():
        raise FileNotFoundError(f"{image_path}: image listed in the split file not found")
    rgb = layout.read_image(image_path)
    H, W = rgb.shape[:2]
    scale = height / H
    size = (height, max(1, int(round(W * scale))))
    resized = np.array(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR))
    f = focal * scale
    K = geometry.intrinsics_from_focal(f, size[1], size[0])
    init = common.sparse_coordinate_map(points, T_c2w, K, size, STRIDE, MAX_POINT_DEPTH)
    io.save_image(out_dir / "rgb" / f"{key}.png", resized)
    layout.write_pose(out_dir / "poses" / f"{key}.txt", T_c2w)
    layout.write_calibration(out_dir / "calibration" / f"{key}.txt", f)
    io.save_torch(out_dir / "init" / f"{key}.dat", torch.from_numpy(init))
    return int(np.any(init != 0, axis=0).sum())


def convert_scene(source: Path, scene: str, dest: Path, height: int = TARGET_HEIGHT, workers: int = 1) -> dict:
    """Convert an extracted Cambridge scene into ``dest/{train,test}``; returns counts."""
    root = _find_root(Path(source), scene)
    nvm = read_nvm(root / "reconstruction.nvm")
    by_stem = {}
    for i, name in enumerate(nvm.names):
        by_stem[os.path.splitext(name.replace("\\", "/"))[0]] = i
    seen = nvm.points_seen_by()
    info: dict = {"nvm_cameras": len(nvm.names), "nvm_points": int(len(nvm.points))}
    for section in ("train", "test"):
        listed = read_dataset_file(root / f"dataset_{section}.txt")
        tasks, missing, outliers = [], 0, 0
        for image, T in listed:
            cam = by_stem.get(os.path.splitext(image)[0])
            if cam is None:
                missing += 1
                continue
            if np.abs(T[:3, 3]).max() > MAX_COORDINATE:
                outliers += 1
                continue
            pts = nvm.points[seen.get(cam, np.zeros(0, dtype=np.int64))]
            key = os.path.splitext(image)[0].replace("/", "_")
            tasks.append((str(root / image), key, T, float(nvm.focals[cam]), pts, str(dest / section), height))
        if not tasks:
            raise ValueError(f"{root / f'dataset_{section}.txt'}: none of its images is in reconstruction.nvm")
        desc = f"Cambridge_{scene} {section}"
        if workers > 1 and len(tasks) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                labels = list(common.progress(pool.map(_convert_frame, tasks, chunksize=8), desc, len(tasks)))
        else:
            labels = list(common.progress(map(_convert_frame, tasks), desc, len(tasks)))
        info[section] = len(tasks)
        info[f"{section}_skipped_not_in_nvm"] = missing
        info[f"{section}_skipped_outlier_pose"] = outliers
        info[f"{section}_median_init_cells"] = float(np.median(labels))
    return info


def setup_scene(scene: str, out: Path, archives: Optional[Path] = None, download_dir: Optional[Path] = None,
                source: Optional[Path] = None, height: int = TARGET_HEIGHT, workers: int = 1,
                keep_archives: bool = False, overwrite: bool = False) -> Path:
    """Fetch (or take) one scene's archive, convert it, and return the finished scene folder."""
    if scene not in SCENES:
        raise ValueError(f"--scene: unknown Cambridge scene '{scene}' (choose from {', '.join(SCENES)})")
    out = Path(out)
    name = f"Cambridge_{scene}"
    if common.scene_exists(out, name) and not overwrite:
        print(f"{out / name} is complete already; skipping (use --overwrite to convert again)")
        return out / name
    with common.archive_source(out, name, f"{scene}.zip", URLS[scene], archives, download_dir, source,
                               keep_archives) as (src, _, _):
        info = {"dataset": "Cambridge Landmarks", "scene": scene, "image_height": height}
        with common.staged_scene(out, name, info, overwrite=overwrite) as tmp:
            info.update(convert_scene(src, scene, tmp, height=height, workers=workers))
    skipped = sum(v for k, v in info.items() if "skipped" in k)
    print(f"{out / name}: {info['train']} train, {info['test']} test frames ({skipped} skipped)")
    return out / name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="setup_cambridge.py",
        description="Download Cambridge Landmarks and convert it to scene folders (Cambridge_<Scene>/train|test): "
                    "images resized to 480 px height, focal lengths from the NVM, sparse init/ maps from the SfM "
                    "points.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_common_arguments(parser, SCENES)
    parser.add_argument("--height", type=int, default=TARGET_HEIGHT, help="image height after resizing")
    parser.add_argument("--source", type=Path, default=None,
                        help="an already extracted scene folder (with reconstruction.nvm); needs exactly one --scene")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes converting frames in parallel")
    return parser


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` and set up the scenes; raises on errors (see :func:`main`)."""
    args = build_parser().parse_args(argv)
    scenes = common.select(args.scene, SCENES)
    if args.source is not None and len(scenes) != 1:
        raise ValueError("--source needs exactly one --scene")
    if args.workers < 1 or args.height < STRIDE:
        raise ValueError(f"--workers must be >= 1 and --height >= {STRIDE}")
    for scene in scenes:
        setup_scene(scene, args.out, archives=args.archives, download_dir=args.download_dir, source=args.source,
                    height=args.height, workers=args.workers, keep_archives=args.keep_archives,
                    overwrite=args.overwrite)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of ``datasets/setup_cambridge.py``: errors end as one line on stderr, exit status 1."""
    common.run_main(run, argv)
