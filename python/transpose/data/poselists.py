"""Pose lists for absolute pose regression: multi-scene CSV files and Cambridge ``dataset_*.txt``.

Multi-scene CSV (MS-Transformer / HyperPose repositories)::

    scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4

- 7-Scenes rows: ``t`` = camera centre, ``q`` = (w, x, y, z) of the camera-to-world rotation.
- Cambridge Landmarks rows copy ``dataset_*.txt``: ``t`` = camera centre, ``q`` = (w, x, y, z)
  of the WORLD-TO-CAMERA rotation.

Cambridge ``dataset_train.txt`` / ``dataset_test.txt``: three header lines, then
``ImageFile X Y Z W P Q R`` (camera centre, world-to-camera quaternion).

Everything is converted to transpose's convention: camera-to-world 4x4 poses, quaternions
(w, x, y, z) of the camera-to-world rotation with ``w >= 0``. Scene ids are the positions of the
scene names in sorted order (or in an explicit ``scene_names`` list, so that train and test lists
of a subset of scenes share ids).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..geometry import make_pose, quat_to_rotmat, rotmat_to_quat

__all__ = ["PoseList", "read_pose_csv", "read_cambridge_list", "read_pose_list",
           "CAMBRIDGE_SCENES", "SEVEN_SCENES", "CSV_COLUMNS"]

CSV_COLUMNS = ("scene", "split", "seq", "img_path", "t1", "t2", "t3", "q1", "q2", "q3", "q4")
#: scenes whose CSV rows hold world-to-camera quaternions (Cambridge Landmarks)
CAMBRIDGE_SCENES = frozenset({"GreatCourt", "KingsCollege", "OldHospital", "ShopFacade", "StMarysChurch", "Street"})
#: scenes whose CSV rows hold camera-to-world quaternions (7-Scenes)
SEVEN_SCENES = frozenset({"chess", "fire", "heads", "office", "pumpkin", "redkitchen", "stairs"})

#: a quaternion whose norm is further than this from 1 is rejected; closer ones are normalized.
#: Not tighter: the official Cambridge StMarysChurch training list has five rows with norms
#: 1.0075 to 1.0429 (e.g. seq12/frame00037.png), which every published model trained on.
UNIT_TOLERANCE = 0.05


@dataclass
class PoseList:
    """Arrays of one pose list (N entries).

    ``image_paths``: paths as written in the file (relative to the dataset root).
    ``poses_c2w`` ``(N, 4, 4)`` float64; ``positions`` ``(N, 3)`` camera centres;
    ``quaternions`` ``(N, 4)`` camera-to-world (w, x, y, z), ``w >= 0``; ``scene_ids`` ``(N,)``
    int64 indexing ``scene_names``; ``splits`` / ``seqs`` per entry ("" when unknown).
    """

    image_paths: List[str]
    poses_c2w: np.ndarray
    scene_ids: np.ndarray
    scene_names: List[str]
    splits: List[str] = field(default_factory=list)
    seqs: List[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def positions(self) -> np.ndarray:
        return self.poses_c2w[:, :3, 3].copy()

    @property
    def quaternions(self) -> np.ndarray:
        return rotmat_to_quat(self.poses_c2w[:, :3, :3])

    def scene_counts(self) -> Dict[str, int]:
        """Number of entries per scene name."""
        counts = np.bincount(self.scene_ids, minlength=len(self.scene_names))
        return {name: int(c) for name, c in zip(self.scene_names, counts)}

    def subset(self, mask: np.ndarray) -> "PoseList":
        """Entries where ``mask (N,)`` is true (scene names and ids unchanged)."""
        idx = np.flatnonzero(np.asarray(mask))
        return PoseList([self.image_paths[i] for i in idx], self.poses_c2w[idx], self.scene_ids[idx],
                        list(self.scene_names), [self.splits[i] for i in idx] if self.splits else [],
                        [self.seqs[i] for i in idx] if self.seqs else [], self.source)


def _parse_floats(values: Sequence[str], path: str, line: int) -> np.ndarray:
    try:
        out = np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        raise ValueError(f"{path}:{line}: expected numbers, got {list(values)}") from None
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{path}:{line}: non-finite value in {list(values)}")
    return out


def _checked_quaternion(q: np.ndarray, path: str, line: int, tolerance: float = UNIT_TOLERANCE) -> np.ndarray:
    norm = float(np.linalg.norm(q))
    if norm < 1e-8:
        raise ValueError(f"{path}:{line}: zero quaternion {q.tolist()}")
    if abs(norm - 1.0) > tolerance:
        raise ValueError(f"{path}:{line}: quaternion {q.tolist()} is not unit (norm {norm:.6f})")
    return q / norm


def _pose_from_row(centre: np.ndarray, q: np.ndarray, world_to_camera: bool) -> np.ndarray:
    rotation = quat_to_rotmat(q)
    if world_to_camera:
        rotation = rotation.T  # R_c2w = R_w2c^T; the centre is already the camera-to-world translation
    return make_pose(rotation, centre)


def _scene_ids(scenes: List[str], scene_names: Optional[Sequence[str]], path: str):
    names = sorted(set(scenes)) if scene_names is None else list(scene_names)
    index = {name: i for i, name in enumerate(names)}
    missing = sorted(set(scenes) - set(index))
    if missing:
        raise ValueError(f"{path}: scene(s) {missing} not in scene_names {names}")
    return np.array([index[s] for s in scenes], dtype=np.int64), names


def read_pose_csv(path: str, quaternion_frame: str = "auto", scene_names: Optional[Sequence[str]] = None,
                  split: Optional[str] = None) -> PoseList:
    """Read a multi-scene APR CSV (``scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4``).

    ``quaternion_frame``: ``"c2w"`` (7-Scenes rows), ``"w2c"`` (Cambridge rows) or ``"auto"``
    (per row by scene name: Cambridge scenes -> w2c, 7-Scenes scenes -> c2w; any other scene
    name is an error asking for an explicit frame). ``split`` keeps only rows of that split.
    Raises ValueError naming the file and line for malformed rows or non-unit quaternions.
    """
    if quaternion_frame not in ("auto", "c2w", "w2c"):
        raise ValueError(f"quaternion_frame must be 'auto', 'c2w' or 'w2c', got {quaternion_frame!r}")
    if not os.path.isfile(path):
        raise ValueError(f"pose list not found: {path}")
    paths, poses, scenes, splits, seqs = [], [], [], [], []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file")
        header = [h.strip() for h in header]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}:1: header lacks column(s) {missing}; expected {','.join(CSV_COLUMNS)}")
        col = {name: header.index(name) for name in CSV_COLUMNS}
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
            scene = row[col["scene"]].strip()
            if split is not None and row[col["split"]].strip() != split:
                continue
            if not scene:
                raise ValueError(f"{path}:{line}: empty scene name")
            centre = _parse_floats([row[col[c]] for c in ("t1", "t2", "t3")], path, line)
            q = _checked_quaternion(_parse_floats([row[col[c]] for c in ("q1", "q2", "q3", "q4")], path, line),
                                    path, line)
            frame = quaternion_frame
            if frame == "auto":
                if scene in CAMBRIDGE_SCENES:
                    frame = "w2c"
                elif scene in SEVEN_SCENES:
                    frame = "c2w"
                else:
                    raise ValueError(f"{path}:{line}: unknown scene {scene!r}: pass quaternion_frame='c2w' "
                                     f"or 'w2c' (Cambridge rows are world-to-camera, 7-Scenes camera-to-world)")
            poses.append(_pose_from_row(centre, q, frame == "w2c"))
            paths.append(row[col["img_path"]].strip())
            scenes.append(scene)
            splits.append(row[col["split"]].strip())
            seqs.append(row[col["seq"]].strip())
    if not paths:
        raise ValueError(f"{path}: no pose rows" + (f" with split {split!r}" if split is not None else ""))
    ids, names = _scene_ids(scenes, scene_names, path)
    return PoseList(paths, np.stack(poses), ids, names, splits, seqs, path)


def read_cambridge_list(path: str, scene: Optional[str] = None, scene_names: Optional[Sequence[str]] = None) -> PoseList:
    """Read a Cambridge Landmarks ``dataset_train.txt`` / ``dataset_test.txt``.

    Three header lines, then ``ImageFile X Y Z W P Q R`` (camera centre, world-to-camera
    quaternion). ``scene`` defaults to the name of the folder holding the file.
    """
    if not os.path.isfile(path):
        raise ValueError(f"pose list not found: {path}")
    scene = scene or os.path.basename(os.path.dirname(os.path.abspath(path)))
    paths, poses = [], []
    with open(path) as f:
        lines = f.read().splitlines()
    if len(lines) < 3:
        raise ValueError(f"{path}: expected 3 header lines before the poses, file has {len(lines)} lines")
    for line_no, text in enumerate(lines[3:], start=4):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 8:
            raise ValueError(f"{path}:{line_no}: expected 'ImageFile X Y Z W P Q R' (8 fields), got {len(fields)}")
        centre = _parse_floats(fields[1:4], path, line_no)
        q = _checked_quaternion(_parse_floats(fields[4:8], path, line_no), path, line_no)
        poses.append(_pose_from_row(centre, q, world_to_camera=True))
        paths.append(fields[0])
    if not paths:
        raise ValueError(f"{path}: no pose rows after the 3 header lines")
    split = "train" if "train" in os.path.basename(path) else ("test" if "test" in os.path.basename(path) else "")
    ids, names = _scene_ids([scene] * len(paths), scene_names, path)
    return PoseList(paths, np.stack(poses), ids, names, [split] * len(paths),
                    [os.path.dirname(p) for p in paths], path)


def read_pose_list(path: str, **kwargs) -> PoseList:
    """Read a pose list, choosing the reader by content: CSV with the APR header, else Cambridge."""
    if not os.path.isfile(path):
        raise ValueError(f"pose list not found: {path}")
    with open(path) as f:
        first = f.readline()
    if first.strip().startswith("scene,"):
        return read_pose_csv(path, **kwargs)
    return read_cambridge_list(path, **kwargs)
