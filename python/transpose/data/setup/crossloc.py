"""CrossLoc aerial datasets (EPFL, comballaz) -> one scene folder with sim / translated / real sections.

Raw format (as CrossLoc distributes it; read with its setup scripts for the conventions):

- ``<name>_img.png``: rendered (Cesium) image; ``<name>_pc.npy``: ``(H, W, 3)`` ECEF point of every
  pixel, ``-1`` where there is no data; one ``*_poses.npy`` per folder, rows ``x, y, z`` (ECEF,
  metres) and ``yaw, pitch, roll`` (degrees) of the camera, indexed by the frame number in the
  file name (the last all-digit ``_`` field).
- Orientation: ``R = R_ned_in_ecef(lon, lat) @ Rz(yaw) Ry(pitch) Rx(roll)``, the body axes being
  forward, right, down; the camera (x right, y down, z forward) takes columns ``[1, 2, 0]``.
- Translated images (``<name>_fake_B.png``) and real photos (``<name>.JPG``) share the geometry of
  the rendered frame ``<name>``.

Output (``--out``/``EPFL`` or ``comballaz``), sections as CrossLoc names them: ``train_sim`` /
``val_sim`` (the LHS renders, 90/10), ``{train,val,test}_drone_sim``, ``..._translated`` and
``..._real`` (40/10/50, the same frames in the three), and ``train_sim_aug`` (``train_sim`` plus
``train_drone_sim``). Each frame gets ``rgb/``, ``poses/`` (camera-to-world in a local frame: ECEF
minus a fixed origin), ``calibration/`` (one focal length), ``init/`` (the point cloud at the cell
centres ``(8j+4, 8i+4)``, minus the origin, zeros = no data), ``depth/`` (z of those points,
float32 metres ``.npy``) and ``normal/`` (unit surface normals of the cell grid in the local world
frame, pointing towards the camera) at stride 8. The split is random with a fixed seed, or read
from CrossLoc's split records (``--split_dir``); the split used is written into the scene folder in
CrossLoc's record format (``<name>_lhs_split.txt``, ``<name>_drone_split.txt``), so it can be passed back.
"""
from __future__ import annotations

import argparse
import math
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ... import geometry, io
from .. import layout
from . import common

WGS84_A = 6378137.0
WGS84_F = 1.0 / 298.257223563
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)
FOCAL = 480.0  # pixels, for CrossLoc's 720x480 renders
STRIDE = 8
SEED = 2021
LHS_SPLIT = (("train_sim", 0.9), ("val_sim", 0.1))
DRONE_SPLIT = (("train", 0.4), ("val", 0.1), ("test", 0.5))

__all__ = ["geodetic_to_ecef", "ecef_to_geodetic", "ned_in_ecef", "camera_pose_from_ecef",
           "grid_normals", "CrossLocSpec", "EPFL", "COMBALLAZ", "convert", "run", "main_epfl",
           "main_comballaz"]


# --------------------------------------------------------------------------- geodesy (WGS84)

def geodetic_to_ecef(lat_deg: float, lon_deg: float, alt: float) -> np.ndarray:
    """ECEF ``(3,)`` metres of a WGS84 latitude, longitude (degrees) and ellipsoidal height (m)."""
    lat, lon = math.radians(lat_deg), math.radians(lon_deg)
    n = WGS84_A / math.sqrt(1.0 - WGS84_E2 * math.sin(lat) ** 2)
    return np.array([(n + alt) * math.cos(lat) * math.cos(lon), (n + alt) * math.cos(lat) * math.sin(lon),
                     (n * (1.0 - WGS84_E2) + alt) * math.sin(lat)])


def ecef_to_geodetic(xyz: np.ndarray) -> Tuple[float, float, float]:
    """WGS84 ``(lat_deg, lon_deg, alt_m)`` of an ECEF point (fixed-point iteration, sub-mm after 5 steps)."""
    x, y, z = (float(v) for v in np.asarray(xyz, dtype=np.float64).reshape(3))
    lon = math.atan2(y, x)
    p = math.hypot(x, y)
    lat = math.atan2(z, p * (1.0 - WGS84_E2))
    alt = 0.0
    for _ in range(10):
        n = WGS84_A / math.sqrt(1.0 - WGS84_E2 * math.sin(lat) ** 2)
        alt = p / max(math.cos(lat), 1e-12) - n
        lat = math.atan2(z, p * (1.0 - WGS84_E2 * n / (n + alt)))
    return math.degrees(lat), math.degrees(lon), alt


def ned_in_ecef(lat_deg: float, lon_deg: float) -> np.ndarray:
    """Rotation ``(3, 3)`` whose columns are the North, East, Down axes at (lat, lon), in ECEF."""
    lat, lon = math.radians(lat_deg), math.radians(lon_deg)
    sl, cl, so, co = math.sin(lat), math.cos(lat), math.sin(lon), math.cos(lon)
    north = [-sl * co, -sl * so, cl]
    east = [-so, co, 0.0]
    down = [-cl * co, -cl * so, -sl]
    return np.array([north, east, down]).T


def camera_pose_from_ecef(x: float, y: float, z: float, yaw: float, pitch: float, roll: float,
                          origin: Optional[np.ndarray] = None) -> np.ndarray:
    """Camera-to-world ``(4, 4)`` from an ECEF position and yaw/pitch/roll in degrees (NED body angles).

    The translation is ``(x, y, z) - origin`` (a local frame keeps float32 coordinates precise).
    """
    lat, lon, _ = ecef_to_geodetic(np.array([x, y, z]))
    body = ned_in_ecef(lat, lon) @ geometry.euler_zyx_to_rotmat(yaw, pitch, roll)  # forward, right, down
    R_c2w = body[:, [1, 2, 0]]  # camera x = right, y = down, z = forward
    t = np.array([x, y, z], dtype=np.float64) - (0.0 if origin is None else np.asarray(origin, dtype=np.float64))
    return geometry.make_pose(R_c2w, t)


# --------------------------------------------------------------------------- geometry of a frame

def grid_normals(points: np.ndarray, valid: np.ndarray, camera_center: np.ndarray) -> np.ndarray:
    """Unit normals ``(3, h, w)`` of an organised point grid ``(3, h, w)``; zeros where undefined.

    Tangents are central differences between valid neighbours (one-sided at borders and holes);
    the normal is their cross product, flipped to face ``camera_center (3,)``.
    """
    P = np.where(valid[None], points, np.nan).astype(np.float64)
    pad = np.pad(P, ((0, 0), (1, 1), (1, 1)), constant_values=np.nan)
    right, left = pad[:, 1:-1, 2:], pad[:, 1:-1, :-2]
    down, up = pad[:, 2:, 1:-1], pad[:, :-2, 1:-1]

    def tangent(after: np.ndarray, before: np.ndarray) -> np.ndarray:
        central = (after - before) / 2.0
        forward, backward = after - P, P - before
        t = np.where(np.isfinite(central).all(0), central, np.where(np.isfinite(forward).all(0), forward, backward))
        return t

    n = np.cross(tangent(right, left), tangent(down, up), axis=0)
    norm = np.linalg.norm(n, axis=0)
    ok = np.isfinite(norm) & (norm > 1e-12) & valid
    n = np.where(ok[None], n / np.where(ok, norm, 1.0)[None], 0.0)
    to_camera = np.asarray(camera_center, dtype=np.float64).reshape(3, 1, 1) - np.nan_to_num(P)
    flip = (n * to_camera).sum(0) < 0
    return np.where(flip[None], -n, n)


def frame_index(name: str) -> int:
    """Frame number of a raw file name: the last all-digit ``_`` field of the stem (CrossLoc's rule)."""
    stem = re.sub(r"(_img\.png|_pc\.npy|_fake_B\.png|\.jpg|\.JPG)$", "", name)
    digits = [t for t in stem.split("_") if t.isdigit()]
    if not digits:
        raise ValueError(f"{name}: no frame number ('_<digits>') in the file name")
    return int(digits[-1])


def _frame_geometry(pc_path: Path, T_c2w: np.ndarray, origin: np.ndarray, image_size: Tuple[int, int]):
    """init, depth and normal maps at stride 8 of one frame (all ``(.., h, w)``, zeros = no data)."""
    try:
        pc = np.load(pc_path)
    except Exception as exc:
        raise ValueError(f"{pc_path}: cannot read point cloud ({type(exc).__name__}: {exc})") from None
    H, W = image_size
    if pc.shape != (H, W, 3):
        raise ValueError(f"{pc_path}: point cloud shape {pc.shape} does not match the {H}x{W} image")
    h, w = -(-H // STRIDE), -(-W // STRIDE)
    rows = np.minimum(np.arange(h) * STRIDE + STRIDE // 2, H - 1)
    cols = np.minimum(np.arange(w) * STRIDE + STRIDE // 2, W - 1)
    sample = np.asarray(pc[np.ix_(rows, cols)], dtype=np.float64).transpose(2, 0, 1)  # (3, h, w) ECEF
    valid = np.all(np.isfinite(sample), axis=0) & ~np.all(sample == -1, axis=0) & ~np.all(sample == 0, axis=0)
    local = np.where(valid[None], sample - origin.reshape(3, 1, 1), 0.0)
    cam = geometry.transform_points(geometry.invert_pose(T_c2w), np.moveaxis(local, 0, -1))
    depth = np.where(valid & (cam[..., 2] > 0), cam[..., 2], 0.0)
    normal = grid_normals(local, valid, T_c2w[:3, 3])
    return local.astype(np.float32), depth.astype(np.float32), normal.astype(np.float32)


def _convert_frame(task: tuple) -> str:
    """Write one frame into every section it belongs to (a top-level function for worker processes)."""
    key, sim_img, pc_path, pose_row, origin, focal, targets = task
    from PIL import Image

    origin = np.asarray(origin)
    try:
        with Image.open(sim_img) as im:
            W, H = im.size
    except Exception as exc:
        raise ValueError(f"{sim_img}: cannot read image ({type(exc).__name__}: {exc})") from None
    T = camera_pose_from_ecef(*pose_row, origin=origin)
    init, depth, normal = _frame_geometry(Path(pc_path), T, origin, (H, W))
    for section_dir, image in targets:
        base = Path(section_dir)
        _write_image(Path(image), (W, H), base / "rgb", key)
        layout.write_pose(base / "poses" / f"{key}.txt", T)
        layout.write_calibration(base / "calibration" / f"{key}.txt", focal)
        io.save_npy(base / "init" / f"{key}.npy", init)
        io.save_npy(base / "depth" / f"{key}.npy", depth)
        io.save_npy(base / "normal" / f"{key}.npy", normal.astype(np.float16))
    return key


def _write_image(src: Path, size: Tuple[int, int], folder: Path, key: str) -> None:
    """Copy an image as is, or resize it to the render's size (real photos) when the aspect matches."""
    from PIL import Image

    ext = ".jpg" if src.suffix.lower() in (".jpg", ".jpeg") else ".png"
    try:
        with Image.open(src) as im:
            im.load()
            if im.size == size:
                common.copy_file(src, folder / f"{key}{ext}")
                return
            if abs(im.size[0] / im.size[1] - size[0] / size[1]) > 0.01:
                raise ValueError(f"{src}: aspect ratio {im.size[0]}x{im.size[1]} differs from the render's "
                                 f"{size[0]}x{size[1]}")
            resized = np.asarray(im.convert("RGB").resize(size, Image.BILINEAR))
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{src}: cannot read image ({type(exc).__name__}: {exc})") from None
    io.save_image(folder / f"{key}{ext}", resized)


# --------------------------------------------------------------------------- datasets

@dataclass(frozen=True)
class CrossLocSpec:
    """One CrossLoc dataset: its name, local origin and raw folders (relative to ``--dataset_dir``)."""

    name: str
    origin_lat_lon_alt: Tuple[float, float, float]
    lhs: Tuple[str, str]  # (argument, default folder)
    flights: Tuple[Tuple[str, str, str, str, str, str], ...]  # (arg, folder) for cesium, translated, real

    @property
    def origin(self) -> np.ndarray:
        return geodetic_to_ecef(*self.origin_lat_lon_alt)


def _flight(prefix_args: str, folder: str, suffix_translated: str = "-cyclegantranslatedreal",
            suffix_real: str = "-real") -> Tuple[str, str, str, str, str, str]:
    return (f"{prefix_args}_cesium", folder, f"{prefix_args}_translated", folder + suffix_translated,
            f"{prefix_args}_real", folder + suffix_real)


EPFL = CrossLocSpec(
    name="EPFL", origin_lat_lon_alt=(46.5191, 6.5668, 390.0), lhs=("lhs_dir", "EPFL/EPFL-LHS"),
    flights=(
        ("piloted_cesium", "EPFL/matching/pilotedflights/2020-09-17/EPFL_2020-09-17-piloted",
         "piloted_translated", "EPFL/matching/pilotedflights/2020-09-17/EPFL_2020-09-17-piloted-cyclegantranslatedreal",
         "piloted_real", "EPFL/matching/pilotedflights/2020-09-17/EPFL_2020-09-17-piloted-real"),
        _flight("planned1", "EPFL/matching/plannedflights/2020-09-17/EPFL_2020-09-17"),
        _flight("planned2", "EPFL/matching/plannedflights/2020-09-24/EPFL_2020-09-24"),
        _flight("planned3", "EPFL/matching/plannedflights/2020-11-11/EPFL_2020-11-11"),
    ))

COMBALLAZ = CrossLocSpec(
    name="comballaz", origin_lat_lon_alt=(46.3705, 7.065, 1410.0), lhs=("lhs_dir", "comballaz/comballaz-LHS"),
    flights=(
        _flight("drone_air2", "comballaz/matching/piloted/djiair2-2020-11-06/comballaz-air2"),
        _flight("drone_phantom_p", "comballaz/matching/piloted/phantom4-2020-11-06/comballaz-phantom-piloted"),
        _flight("drone_phantom_s", "comballaz/matching/planned/phantom4-2020-11-06/comballaz-phantom-survey"),
    ))


def _read_folder(folder: Path) -> Tuple[Dict[str, Tuple[Path, Path]], np.ndarray]:
    """key -> (image, point cloud) of a rendered folder, and its pose table ``(N, 6)``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: raw data folder not found")
    images = {p.name[: -len("_img.png")]: p for p in folder.iterdir() if p.name.endswith("_img.png")}
    clouds = {p.name[: -len("_pc.npy")]: p for p in folder.iterdir() if p.name.endswith("_pc.npy")}
    if not images:
        raise ValueError(f"{folder}: no *_img.png renders")
    for key, img in images.items():
        if key not in clouds:
            raise ValueError(f"{img}: no point cloud {key}_pc.npy beside it")
    tables = sorted(folder.glob("*_poses.npy"))
    if len(tables) != 1:
        raise ValueError(f"{folder}: expected one *_poses.npy file, found {len(tables)}")
    try:
        poses = np.load(tables[0])
    except Exception as exc:
        raise ValueError(f"{tables[0]}: cannot read poses ({type(exc).__name__}: {exc})") from None
    if poses.ndim != 2 or poses.shape[1] != 6 or not np.all(np.isfinite(poses)):
        raise ValueError(f"{tables[0]}: expected finite rows of x, y, z, yaw, pitch, roll, got shape {poses.shape}")
    return {k: (images[k], clouds[k]) for k in sorted(images)}, poses


def _other_images(folder: Path, keys: Sequence[str], kind: str) -> Dict[str, Path]:
    """key -> translated (``<key>_fake_B.png``) or real (``<key>.JPG``/``.jpg``) image of a rendered key."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: raw data folder not found")
    if kind == "translated":
        found = {p.name[: -len("_fake_B.png")]: p for p in folder.iterdir() if p.name.endswith("_fake_B.png")}
    else:
        found = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")}
    missing = [k for k in keys if k not in found]
    if missing:
        raise ValueError(f"{folder}: no {kind} image for render '{missing[0]}' ({len(missing)} of {len(keys)} missing)")
    return {k: found[k] for k in keys}


def _split(keys: Sequence[str], parts: Sequence[Tuple[str, float]], rng: np.random.Generator) -> Dict[str, List[str]]:
    """Random split of ``keys`` with the given proportions (the last part takes the remainder)."""
    order = rng.permutation(len(keys))
    out, start = {}, 0
    for i, (name, ratio) in enumerate(parts):
        n = len(keys) - start if i == len(parts) - 1 else int(len(keys) * ratio)
        out[name] = sorted(keys[j] for j in order[start:start + n])
        start += n
    return out


def _read_split_record(path: Path, parts: Sequence[str], keys: Sequence[str]) -> Dict[str, List[str]]:
    """CrossLoc's split record: ``Subset section ***train***`` headers followed by frame names."""
    out: Dict[str, List[str]] = {}
    current = None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        m = re.fullmatch(r"Subset section \*\*\*(\w+)\*\*\*", line)
        if m:
            current = m.group(1)
            out[current] = []
        elif current is None:
            raise ValueError(f"{path}:{n}: frame name before any 'Subset section ***name***' header")
        else:
            out[current].append(line)
    result = {}
    for section, frames in out.items():
        part = next((p for p in parts if p.split("_")[0] == section or p == section), None)
        if part is None:
            raise ValueError(f"{path}: unknown section '{section}' (expected {', '.join(parts)})")
        result[part] = sorted(frames)
    listed = {k for v in result.values() for k in v}
    if set(keys) != listed:
        extra = sorted(listed - set(keys))[:1] or sorted(set(keys) - listed)[:1]
        raise ValueError(f"{path}: does not list exactly the frames found (first difference: '{extra[0]}')")
    return result


def _write_split_record(path: Path, split: Dict[str, List[str]]) -> None:
    text = "".join(f"Subset section ***{name.split('_')[0]}***\n" + "".join(f"{k}\n" for k in keys)
                   for name, keys in split.items())
    io.write_text(path, text)


def convert(spec: CrossLocSpec, folders: Dict[str, Path], dest: Path, focal: float = FOCAL,
            split_dir: Optional[Path] = None, workers: int = 1, seed: int = SEED) -> dict:
    """Convert the raw folders of ``spec`` (argument name -> path) into sections under ``dest``."""
    origin = spec.origin
    rng = np.random.default_rng(seed)
    tasks: List[tuple] = []
    info: dict = {"origin_ecef": origin.tolist(), "focal": focal}

    # LHS renders: train_sim / val_sim
    lhs, poses = _read_folder(folders[spec.lhs[0]])
    keys = list(lhs)
    record = split_dir / f"{spec.name.lower()}_lhs_split.txt" if split_dir is not None else None
    split = (_read_split_record(record, [p for p, _ in LHS_SPLIT], keys) if record is not None and record.is_file()
             else _split(keys, LHS_SPLIT, rng))
    _write_split_record(dest / f"{spec.name.lower()}_lhs_split.txt", split)
    section_of = {k: s for s, ks in split.items() for k in ks}
    for k, (img, pc) in lhs.items():
        row = _pose_row(poses, img)
        targets = [(str(dest / section_of[k]), str(img))]
        if section_of[k] == "train_sim":
            targets.append((str(dest / "train_sim_aug"), str(img)))
        tasks.append((k, str(img), str(pc), row, origin, focal, targets))

    # drone flights: rendered, translated and real images of the same frames, one split for all three
    flights = []
    for arg_c, _, arg_t, _, arg_r, _ in spec.flights:
        renders, fposes = _read_folder(folders[arg_c])
        translated = _other_images(folders[arg_t], list(renders), "translated")
        real = _other_images(folders[arg_r], list(renders), "real")
        flights.append((renders, fposes, translated, real))
    drone_keys = [k for f in flights for k in f[0]]
    if len(set(drone_keys)) != len(drone_keys):
        raise ValueError("two drone flights hold frames with the same name; cannot merge them into one section")
    record = split_dir / f"{spec.name.lower()}_drone_split.txt" if split_dir is not None else None
    parts = [p for p, _ in DRONE_SPLIT]
    split = (_read_split_record(record, parts, drone_keys) if record is not None and record.is_file()
             else _split(drone_keys, DRONE_SPLIT, rng))
    _write_split_record(dest / f"{spec.name.lower()}_drone_split.txt", split)
    part_of = {k: p for p, ks in split.items() for k in ks}
    for renders, fposes, translated, real in flights:
        for k, (img, pc) in renders.items():
            part = part_of[k]
            targets = [(str(dest / f"{part}_drone_sim"), str(img)), (str(dest / f"{part}_translated"), str(translated[k])),
                       (str(dest / f"{part}_real"), str(real[k]))]
            if part == "train":
                targets.append((str(dest / "train_sim_aug"), str(img)))
            tasks.append((k, str(img), str(pc), _pose_row(fposes, img), origin, focal, targets))

    desc = f"{spec.name}"
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(common.progress(pool.map(_convert_frame, tasks, chunksize=8), desc, len(tasks)))
    else:
        list(common.progress(map(_convert_frame, tasks), desc, len(tasks)))
    info["sections"] = {p.name: len(list((p / "rgb").iterdir())) for p in sorted(dest.iterdir())
                        if (p / "rgb").is_dir()}
    return info


def _pose_row(poses: np.ndarray, image: Path) -> Tuple[float, ...]:
    idx = frame_index(image.name)
    if not 0 <= idx < len(poses):
        raise ValueError(f"{image}: frame number {idx} has no row in the pose table ({len(poses)} rows)")
    return tuple(float(v) for v in poses[idx])


# --------------------------------------------------------------------------- CLI

def build_parser(spec: CrossLocSpec) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"setup_{spec.name.lower()}.py",
        description=f"Convert CrossLoc's raw {spec.name} data (renders, ECEF point clouds, pose tables, translated and "
                    f"real drone images) into one scene folder with sim / translated / real sections.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset_dir", type=Path, required=True, help="folder holding the raw data folders")
    parser.add_argument(f"--{spec.lhs[0]}", type=str, default=spec.lhs[1], help="LHS renders (relative to dataset_dir)")
    for arg_c, dir_c, arg_t, dir_t, arg_r, dir_r in spec.flights:
        parser.add_argument(f"--{arg_c}", type=str, default=dir_c, help="rendered drone frames")
        parser.add_argument(f"--{arg_t}", type=str, default=dir_t, help="their CycleGAN-translated images")
        parser.add_argument(f"--{arg_r}", type=str, default=dir_r, help="the real drone photos")
    parser.add_argument("--out", type=Path, default=layout.DEFAULT_ROOT,
                        help=f"output folder; the scene is written to OUT/{spec.name}")
    parser.add_argument("--focal", type=float, default=FOCAL, help="focal length of the renders in pixels")
    parser.add_argument("--split_dir", type=Path, default=None,
                        help=f"folder with CrossLoc's split records ({spec.name.lower()}_lhs_split.txt, "
                             f"{spec.name.lower()}_drone_split.txt); default: a seeded random split")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the random split")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes converting frames in parallel")
    parser.add_argument("--overwrite", action="store_true", help="convert again when the scene is already complete")
    return parser


def run(spec: CrossLocSpec, argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` and convert ``spec``; raises on errors (see :func:`main_epfl`)."""
    args = build_parser(spec).parse_args(argv)
    if args.workers < 1 or args.focal <= 0:
        raise ValueError("--workers must be >= 1 and --focal > 0")
    if not args.dataset_dir.is_dir():
        raise FileNotFoundError(f"--dataset_dir {args.dataset_dir}: not a folder")
    names = [spec.lhs[0]] + [a for f in spec.flights for a in f[0::2]]
    folders = {a: args.dataset_dir / getattr(args, a) for a in names}
    for a, p in folders.items():
        if not p.is_dir():
            raise FileNotFoundError(f"--{a} {p}: raw data folder not found")
    if args.split_dir is not None and not args.split_dir.is_dir():
        raise FileNotFoundError(f"--split_dir {args.split_dir}: not a folder")
    if common.scene_exists(args.out, spec.name) and not args.overwrite:
        print(f"{args.out / spec.name} is complete already; skipping (use --overwrite to convert again)")
        return 0
    info = {"dataset": f"CrossLoc {spec.name}"}
    with common.staged_scene(args.out, spec.name, info, overwrite=args.overwrite) as tmp:
        info.update(convert(spec, folders, tmp, focal=args.focal, split_dir=args.split_dir, workers=args.workers,
                            seed=args.seed))
    print(f"{args.out / spec.name}: " + ", ".join(f"{k} {v}" for k, v in info["sections"].items()))
    return 0


def main_epfl(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of ``datasets/setup_epfl.py``."""
    common.run_main(lambda a: run(EPFL, a), argv)


def main_comballaz(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of ``datasets/setup_comballaz.py``."""
    common.run_main(lambda a: run(COMBALLAZ, a), argv)
