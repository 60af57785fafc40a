"""View overlap between frames and positive / negative pair mining for sim-to-real contrastive training.

Two overlap measures, both computed from the 3D points each frame sees (its coordinate map or
back-projected depth, subsampled to a fixed number of cells per frame):

- **Frustum overlap** (CamNet, CrossLoc): the share of frame *i*'s valid cells that project inside
  frame *j*'s image, in front of its camera. It is asymmetric, ``O[i, j] != O[j, i]``; the *mutual*
  overlap is their mean. It ignores occlusion (a wall behind a wall still counts).
- **Normalized surface overlap** (NSO, Rau et al. 2020, Niantic's image-box-overlap): the share of
  frame *i*'s points that have a nearest neighbour among frame *j*'s points closer than a radius,
  each match weighted by how well the two normals agree, ``(1 + cos) / 2``. Also asymmetric: a
  close-up of half a wall is covered by a view of the whole wall (NSO 1), not the other way round.

The *geometric distance* of two frames (CrossLoc) mixes one minus the mutual overlap with the
rotation angle between the cameras and, optionally, the distance between their centres, each
saturated to [0, 1]. Mining ranks every frame's candidates by that distance, separately per domain
(sim or real), and keeps *k-reciprocal* pairs: ``j`` is a positive of ``i`` when ``j`` is among
the closest ``pos_forward`` share of ``i``'s candidates of ``j``'s domain **and** ``i`` is among
the closest ``pos_backward`` share of ``j``'s candidates of ``i``'s domain (and the cameras are at
most ``pos_max_trans`` apart); negatives are the farthest shares, likewise both ways.

Everything is vectorised and chunked (torch for the point work, numpy for ranks): the N x N
matrices of a few thousand frames take tens of MB, and no intermediate grows beyond ``chunk``
points. :func:`mine_scene` caches the matrices and the mined lists beside the scene
(``<scene>/pairs/<sections>_<hash>.npz``, written atomically); the hash covers the frames, their
poses and every setting, so a changed scene or setting is recomputed, never read stale.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import geometry, io
from . import layout

__all__ = [
    "FrameGeometry", "MiningConfig", "PairMining", "LIST_KINDS",
    "load_frame_geometry", "normals_from_points", "frustum_overlap", "frustum_overlap_matrix",
    "pose_distance_matrices", "geometric_distance", "normalized_surface_overlap", "nso_matrix",
    "domain_ranks", "mine_pairs", "mine_scene", "default_domain",
]

#: The four mined lists of every anchor: in-domain / cross-domain positives and negatives.
LIST_KINDS = ("pos_same", "pos_cross", "neg_same", "neg_cross")
ARRAY_EXTS = (".dat", ".npy", ".npz")


# =========================================================================== frame geometry

@dataclass
class FrameGeometry:
    """What overlap needs to know of N frames.

    Attributes:
        names: ``section/key`` of each frame.
        domains: ``(N,)`` int, index into ``domain_names`` (e.g. 0 = sim, 1 = real).
        domain_names: names of the domains.
        points: ``(N, P, 3)`` float32 world points of P cells per frame; NaN rows are padding.
        normals: ``(N, P, 3)`` float32 world-frame unit normals of the same cells (NaN = unknown).
        poses: ``(N, 4, 4)`` float64 camera-to-world.
        K: ``(N, 3, 3)`` float64 intrinsics of the full-size image.
        sizes: ``(N, 2)`` int ``(height, width)`` of the image in pixels.
    """

    names: List[str]
    domains: np.ndarray
    domain_names: List[str]
    points: np.ndarray
    normals: np.ndarray
    poses: np.ndarray
    K: np.ndarray
    sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def valid(self) -> np.ndarray:
        """``(N, P)`` bool: cells holding a point."""
        return np.all(np.isfinite(self.points), axis=-1)


def default_domain(section: str) -> str:
    """``'real'`` for sections named ``*real*`` (CrossLoc's ``train_real``), else ``'sim'``."""
    return "real" if "real" in section.lower() else "sim"


def normals_from_points(points: np.ndarray) -> np.ndarray:
    """Unit normals ``(h, w, 3)`` of a grid of 3D points ``(h, w, 3)`` (NaN = no point).

    The cross product of central differences along the grid's two axes; cells whose neighbours are
    missing get NaN. The sign is arbitrary (NSO uses ``(1 + cos) / 2``, so flip-consistent grids
    from one camera agree with each other); callers that know the camera may orient them.
    """
    p = np.asarray(points, dtype=np.float64)
    du = np.full_like(p, np.nan)
    dv = np.full_like(p, np.nan)
    du[:, 1:-1] = p[:, 2:] - p[:, :-2]
    dv[1:-1] = p[2:] - p[:-2]
    n = np.cross(du, dv)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = np.where(norm > 1e-12, n / norm, np.nan)
    return n


def _image_size(path: Path) -> Tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            W, H = im.size
    except OSError as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from None
    return H, W


def load_frame_geometry(scene: Union[str, Path], sections: Sequence[str] = ("train_sim", "train_real"),
                        root: Union[str, Path] = layout.DEFAULT_ROOT, cells: int = 128, seed: int = 0,
                        domains: Optional[Sequence[str]] = None, stride: int = 8) -> FrameGeometry:
    """Read the points, normals, poses and intrinsics of every frame of ``sections``.

    Points come from ``init/`` coordinate maps when a section has them, else from ``depth/``
    (back-projected at the cell centres ``(8j + 4, 8i + 4)``); normals from ``normal/``, else
    estimated from the point grid. ``cells`` valid cells per frame are drawn at random (seeded per
    frame), so every frame weighs the same whatever its resolution.

    Args:
        domains: domain name of each section (default: :func:`default_domain`).

    Raises:
        ValueError naming the section or file when a frame has neither init/ nor depth/.
    """
    scene_dir = layout.resolve_scene(scene, root)
    if domains is None:
        domains = [default_domain(s) for s in sections]
    if len(domains) != len(sections):
        raise ValueError(f"domains: need one per section ({len(sections)}), got {len(domains)}")
    domain_names = list(dict.fromkeys(domains))
    names, doms, pts_all, nrm_all, poses, Ks, sizes = [], [], [], [], [], [], []
    for section, domain in zip(sections, domains):
        sec = layout.section_dir(scene_dir, section)
        images = layout.index_folder(sec / "rgb", layout.IMAGE_EXTS)
        if not images:
            raise ValueError(f"{sec / 'rgb'}: no images found")
        pose_files = layout.index_folder(sec / "poses", (".txt",))
        calibs = layout.index_folder(sec / "calibration", (".txt",))
        inits = layout.index_folder(sec / "init", ARRAY_EXTS)
        depths = layout.index_folder(sec / "depth", (".png",) + ARRAY_EXTS)
        normal_files = layout.index_folder(sec / "normal", ARRAY_EXTS)
        for key, image_path in images.items():
            if key not in pose_files or key not in calibs:
                raise ValueError(f"{image_path}: no pose or calibration file for frame '{key}' in {sec}")
            H, W = _image_size(image_path)
            K = layout.read_calibration(calibs[key], W, H)
            T = layout.read_pose(pose_files[key])
            h, w = -(-H // stride), -(-W // stride)
            if key in inits:
                coords = layout.read_coords(inits[key])
                ok = (np.all(np.isfinite(coords), axis=0) & np.any(coords != 0, axis=0)
                      & ~np.all(coords == -1, axis=0))
                grid = np.where(ok[..., None], np.moveaxis(coords, 0, -1), np.nan)
            elif key in depths:
                depth = layout.read_depth(depths[key])
                s = max(1, int(round(H / depth.shape[0])))
                centres = geometry.cell_centers(h, w, stride)
                rows = np.clip((centres[..., 1] / s).astype(int), 0, depth.shape[0] - 1)
                cols = np.clip((centres[..., 0] / s).astype(int), 0, depth.shape[1] - 1)
                grid = geometry.backproject_depth(depth[rows, cols], K, T, pixels=centres)
            else:
                raise ValueError(f"{image_path}: frame '{key}' has neither init/ nor depth/ (overlap needs 3D points)")
            if key in normal_files:
                nmap = layout.read_normals(normal_files[key])
                nmap = np.moveaxis(nmap, 0, -1)
                normals = np.where(np.linalg.norm(nmap, axis=-1, keepdims=True) > 0.5, nmap, np.nan)
                if normals.shape != grid.shape:
                    raise ValueError(f"{normal_files[key]}: normal map {normals.shape[:2]} does not match "
                                     f"the coordinate grid {grid.shape[:2]}")
            else:
                normals = normals_from_points(grid)
            flat_p = grid.reshape(-1, 3).astype(np.float32)
            flat_n = normals.reshape(-1, 3).astype(np.float32)
            valid = np.flatnonzero(np.all(np.isfinite(flat_p), axis=1))
            rng = np.random.default_rng([seed, len(names)])
            pick = rng.choice(valid, size=min(cells, valid.size), replace=False) if valid.size else valid
            p = np.full((cells, 3), np.nan, np.float32)
            n = np.full((cells, 3), np.nan, np.float32)
            p[: pick.size] = flat_p[pick]
            n[: pick.size] = flat_n[pick]
            names.append(f"{section}/{key}")
            doms.append(domain_names.index(domain))
            pts_all.append(p)
            nrm_all.append(n)
            poses.append(T)
            Ks.append(K)
            sizes.append((H, W))
    return FrameGeometry(names=names, domains=np.asarray(doms, dtype=np.int64), domain_names=domain_names,
                         points=np.stack(pts_all), normals=np.stack(nrm_all), poses=np.stack(poses),
                         K=np.stack(Ks), sizes=np.asarray(sizes, dtype=np.int64))


# =========================================================================== frustum overlap

def frustum_overlap(points: torch.Tensor, T_c2w: torch.Tensor, K: torch.Tensor, sizes: torch.Tensor,
                    min_depth: float = 0.1) -> torch.Tensor:
    """Share of each point set's valid points that each camera sees (inside its image, in front of it).

    Args:
        points: ``(A, P, 3)`` world points; rows with a NaN are padding and do not count.
        T_c2w: ``(B, 4, 4)`` camera-to-world poses; K ``(B, 3, 3)``; sizes ``(B, 2)`` ``(height, width)``.
        min_depth: points closer than this (metres, camera z) count as not seen.

    Returns:
        ``(A, B)`` overlap in [0, 1]: entry ``(a, b)`` is the share of set a's valid points inside
        camera b's frustum (0 for a set without valid points).
    """
    dtype = torch.float64
    valid = torch.isfinite(points).all(-1)                      # (A, P)
    A, P, _ = points.shape
    B = T_c2w.shape[0]
    # one GEMM for every (point, camera) pair: [x y z 1] @ (K [R_w2c | t_w2c])^T of all cameras
    T_w2c = torch.linalg.inv(T_c2w.to(dtype))                    # (B, 4, 4)
    proj = K.to(dtype) @ T_w2c[:, :3, :]                         # (B, 3, 4)
    pts_h = torch.cat([torch.nan_to_num(points.to(dtype)), points.new_ones(A, P, 1, dtype=dtype)], -1)
    uvw = (pts_h.reshape(A * P, 4) @ proj.permute(2, 0, 1).reshape(4, B * 3)).reshape(A, P, B, 3)
    z = uvw[..., 2]                                              # camera depth: K's last row is 0 0 1
    w = z.clamp_min(1e-9)
    u, v = uvw[..., 0] / w, uvw[..., 1] / w
    H = sizes[:, 0].to(dtype)
    W = sizes[:, 1].to(dtype)
    inside = (z > min_depth) & (u >= 0) & (u < W) & (v >= 0) & (v < H)   # (A, P, B)
    inside = (inside & valid[:, :, None]).transpose(1, 2)        # (A, B, P)
    count = valid.sum(-1, keepdim=True).to(dtype)                # (A, 1)
    return inside.sum(-1).to(dtype) / count.clamp_min(1.0)


def _chunk_rows(n_rows: int, per_row: int, budget: int) -> int:
    """Rows per chunk so that ``rows * per_row`` stays below ``budget`` elements."""
    return max(1, min(n_rows, budget // max(1, per_row)))


def frustum_overlap_matrix(geom: FrameGeometry, min_depth: float = 0.1, budget: int = 4_000_000,
                           progress: bool = False) -> np.ndarray:
    """``(N, N)`` float32 frustum overlap: ``O[i, j]`` = share of frame i's cells that frame j sees.

    Computed in chunks of anchor frames so that no intermediate exceeds ``budget`` points.
    """
    N, P, _ = geom.points.shape
    points = torch.from_numpy(geom.points)
    poses = torch.from_numpy(geom.poses)
    K = torch.from_numpy(geom.K)
    sizes = torch.from_numpy(geom.sizes)
    out = np.zeros((N, N), np.float32)
    rows = _chunk_rows(N, N * P, budget)
    starts = range(0, N, rows)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="frustum overlap", unit="chunk")
    for s in starts:
        out[s:s + rows] = frustum_overlap(points[s:s + rows], poses, K, sizes, min_depth).numpy()
    return out


# =========================================================================== pose distances

def pose_distance_matrices(poses: np.ndarray, rows: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """Rotation angle (degrees) and camera-centre distance (metres) between all pairs of poses.

    Args:
        poses: ``(N, 4, 4)`` camera-to-world.

    Returns:
        ``(rot_deg (N, N), trans_m (N, N))`` float32.
    """
    poses = np.asarray(poses, dtype=np.float64)
    N = len(poses)
    rot = np.zeros((N, N), np.float32)
    trans = np.zeros((N, N), np.float32)
    for s in range(0, N, rows):
        blk = poses[s:s + rows, None]
        rot[s:s + rows] = geometry.rotation_error_deg(blk[..., :3, :3], poses[None, :, :3, :3])
        trans[s:s + rows] = geometry.translation_error(blk, poses[None])
    return rot, trans


def geometric_distance(overlap: np.ndarray, rot_deg: np.ndarray, trans_m: np.ndarray,
                       weight_overlap: float = 0.5, weight_rot: float = 0.5, weight_trans: float = 0.0,
                       sat_rot: float = 180.0, sat_trans: float = 10.0) -> np.ndarray:
    """CrossLoc's geometric distance of all pairs, in [0, 1] (0 = same view).

    ``(w_o (1 - (O + O^T) / 2) + w_r min(rot, sat_rot) / sat_rot + w_t min(trans, sat_trans) / sat_trans)
    / (w_o + w_r + w_t)``; with ``sat_rot = 180`` the rotation term is CrossLoc's ``acos(.) / pi``.

    Args:
        overlap: ``(N, N)`` asymmetric overlap (frustum or NSO); rot_deg, trans_m ``(N, N)``.
    """
    weights = (weight_overlap, weight_rot, weight_trans)
    if min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"distance weights must be >= 0 with a positive sum, got {weights}")
    if sat_rot <= 0 or sat_trans <= 0:
        raise ValueError(f"sat_rot and sat_trans must be positive, got {sat_rot}, {sat_trans}")
    mutual = 0.5 * (overlap + overlap.T)
    d = (weight_overlap * (1.0 - mutual) + weight_rot * np.minimum(rot_deg, sat_rot) / sat_rot
         + weight_trans * np.minimum(trans_m, sat_trans) / sat_trans)
    return (d / sum(weights)).astype(np.float32)


# =========================================================================== normalized surface overlap

def normalized_surface_overlap(points_a: torch.Tensor, normals_a: torch.Tensor, points_b: torch.Tensor,
                               normals_b: torch.Tensor, radius: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """NSO both ways for a batch of point-set pairs.

    Every valid point of a finds its nearest valid point of b; when it is closer than ``radius`` it
    counts with the weight ``(1 + n_a . n_b) / 2`` (0 when a normal is unknown). NSO(a -> b) is the
    weighted count over the number of valid points of a.

    Args:
        points_a: ``(M, P, 3)``; normals_a ``(M, P, 3)`` unit; points_b / normals_b ``(M, Q, 3)``.
            Rows of points holding a NaN are padding.
        radius: match distance in metres.

    Returns:
        ``(nso_ab (M,), nso_ba (M,))`` in [0, 1].
    """
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    va = torch.isfinite(points_a).all(-1)
    vb = torch.isfinite(points_b).all(-1)
    # float32 distances on points centred per pair: |a|^2 + |b|^2 - 2ab stays accurate to ~1e-6 m^2
    centre = torch.nan_to_num(points_a.double()).sum(1, keepdim=True) / va.sum(1, keepdim=True).clamp_min(1)[..., None]
    pa = torch.nan_to_num(points_a.double() - centre).float()
    pb = torch.nan_to_num(points_b.double() - centre).float()
    dist = torch.cdist(pa, pb)                                   # (M, P, Q)
    dist = dist.masked_fill(~va[:, :, None] | ~vb[:, None, :], float("inf"))

    def one_way(d: torch.Tensor, valid: torch.Tensor, n_src: torch.Tensor, n_dst: torch.Tensor) -> torch.Tensor:
        nn_dist, nn_idx = d.min(-1)                              # (M, P)
        n_match = torch.gather(n_dst.double(), 1, nn_idx[..., None].expand(-1, -1, 3))
        cos = (n_src.double() * n_match).sum(-1)
        weight = torch.nan_to_num(0.5 * (1.0 + cos), nan=0.0).clamp(0.0, 1.0)
        hit = (nn_dist < radius) & valid
        return (weight * hit).sum(-1) / valid.sum(-1).clamp_min(1)

    return one_way(dist, va, normals_a, normals_b), one_way(dist.transpose(1, 2), vb, normals_b, normals_a)


def nso_matrix(geom: FrameGeometry, radius: float = 0.1, candidates: Optional[np.ndarray] = None,
               budget: int = 8_000_000, progress: bool = False) -> np.ndarray:
    """``(N, N)`` float32 NSO: ``S[i, j]`` = NSO(frame i -> frame j); diagonal 1 where a frame has points.

    Only pairs where ``candidates`` (``(N, N)`` bool, e.g. a positive frustum overlap) is True are
    computed (both directions when either direction is a candidate); the others are 0. Pairs are
    processed in chunks of at most ``budget`` point-to-point distances.
    """
    N, P, _ = geom.points.shape
    cand = np.ones((N, N), bool) if candidates is None else np.asarray(candidates, bool)
    cand = np.triu(cand | cand.T, k=1)
    ii, jj = np.nonzero(cand)
    out = np.zeros((N, N), np.float32)
    has_points = geom.valid().any(1)
    out[np.arange(N), np.arange(N)] = has_points.astype(np.float32)
    points = torch.from_numpy(geom.points)
    normals = torch.from_numpy(geom.normals)
    step = _chunk_rows(len(ii), P * P, budget)
    starts = range(0, len(ii), step)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="surface overlap", unit="chunk")
    for s in starts:
        a, b = torch.from_numpy(ii[s:s + step]), torch.from_numpy(jj[s:s + step])
        ab, ba = normalized_surface_overlap(points[a], normals[a], points[b], normals[b], radius)
        out[ii[s:s + step], jj[s:s + step]] = ab.numpy()
        out[jj[s:s + step], ii[s:s + step]] = ba.numpy()
    return out


# =========================================================================== mining

@dataclass
class MiningConfig:
    """Settings of :func:`mine_pairs` (defaults follow CrossLoc's, with shares fitted to small scenes)."""

    overlap: str = "frustum"        # 'frustum', 'nso' or 'both' (mean of the two)
    cells: int = 128                # cells drawn per frame
    min_depth: float = 0.1          # m: frustum test
    nso_radius: float = 0.1         # m: NSO match radius
    weight_overlap: float = 0.5
    weight_rot: float = 0.5
    weight_trans: float = 0.0
    sat_rot: float = 180.0          # deg
    sat_trans: float = 10.0         # m
    pos_forward: float = 0.05       # share of the anchor's ranking (per domain) kept as positive candidates
    pos_backward: float = 0.10      # the anchor must be within this share of the candidate's ranking
    pos_max_trans: Optional[float] = None  # m: positives' cameras at most this far apart
    pos_min_overlap: float = 0.0    # mutual overlap a positive must exceed
    neg_forward: float = 0.5        # farthest share kept as negative candidates
    neg_backward: float = 0.5
    neg_min_trans: Optional[float] = None  # m: negatives' cameras at least this far apart
    seed: int = 0

    def validate(self) -> "MiningConfig":
        if self.overlap not in ("frustum", "nso", "both"):
            raise ValueError(f"overlap must be frustum, nso or both, got '{self.overlap}'")
        for name in ("pos_forward", "pos_backward", "neg_forward", "neg_backward"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {v}")
        if self.cells <= 0:
            raise ValueError(f"cells must be positive, got {self.cells}")
        return self


def domain_ranks(distance: np.ndarray, domains: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Rank of every candidate in every anchor's ranking of the candidate's domain.

    Args:
        distance: ``(N, N)``; domains ``(N,)`` int.

    Returns:
        ``(rank (N, N) int32, counts (N, D) int64)``: ``rank[i, j]`` is the 0-based position of j
        among i's candidates of domain ``domains[j]`` sorted by distance (ties by index; i itself
        is never a candidate and ranks last); ``counts[i, d]`` is how many candidates of domain d
        anchor i has.
    """
    N = len(distance)
    d = np.array(distance, dtype=np.float64, copy=True)
    np.fill_diagonal(d, np.inf)
    n_dom = int(domains.max()) + 1 if N else 0
    rank = np.zeros((N, N), np.int32)
    counts = np.zeros((N, n_dom), np.int64)
    for dom in range(n_dom):
        cols = np.flatnonzero(domains == dom)
        if cols.size == 0:
            continue
        order = np.argsort(d[:, cols], axis=1, kind="stable")
        r = np.empty_like(order)
        np.put_along_axis(r, order, np.broadcast_to(np.arange(cols.size), order.shape), axis=1)
        rank[:, cols] = r
        counts[:, dom] = cols.size - (domains == dom).astype(np.int64)
    return rank, counts


def _to_csr(mask: np.ndarray, distance: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Row lists of a boolean ``(N, N)`` mask, each sorted by distance: ``(indptr (N+1,), indices)``."""
    indptr = np.zeros(len(mask) + 1, np.int64)
    rows = []
    for i, row in enumerate(mask):
        js = np.flatnonzero(row)
        js = js[np.argsort(distance[i, js], kind="stable")]
        rows.append(js)
        indptr[i + 1] = indptr[i] + js.size
    indices = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    return indptr, indices


@dataclass
class PairMining:
    """Overlap, distances and mined lists of N frames (see :func:`mine_pairs`)."""

    names: List[str]
    domains: np.ndarray
    domain_names: List[str]
    overlap: np.ndarray              # (N, N) float32, asymmetric
    distance: np.ndarray             # (N, N) float32, symmetric geometric distance
    trans: np.ndarray                # (N, N) float32 camera-centre distances
    lists: Dict[str, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    def get(self, kind: str, anchor: int) -> np.ndarray:
        """Frame indices of list ``kind`` (one of :data:`LIST_KINDS`) of ``anchor``, closest first."""
        if kind not in LIST_KINDS:
            raise ValueError(f"kind must be one of {LIST_KINDS}, got '{kind}'")
        indptr, indices = self.lists[kind]
        return indices[indptr[anchor]:indptr[anchor + 1]]

    def positives(self, anchor: int) -> np.ndarray:
        return np.concatenate([self.get("pos_same", anchor), self.get("pos_cross", anchor)])

    def negatives(self, anchor: int) -> np.ndarray:
        return np.concatenate([self.get("neg_same", anchor), self.get("neg_cross", anchor)])

    def positive_matrix(self) -> np.ndarray:
        """``(N, N)`` bool, symmetric: i and j are positives of each other (either list)."""
        N = len(self)
        m = np.zeros((N, N), bool)
        for kind in ("pos_same", "pos_cross"):
            indptr, indices = self.lists[kind]
            rows = np.repeat(np.arange(N), np.diff(indptr))
            m[rows, indices] = True
        return m | m.T

    def anchors(self, cross: bool = False) -> np.ndarray:
        """Frames with at least one positive (with ``cross``: at least one cross-domain positive)."""
        kinds = ("pos_cross",) if cross else ("pos_same", "pos_cross")
        n = sum(np.diff(self.lists[k][0]) for k in kinds)
        return np.flatnonzero(n > 0)

    def save(self, path: Union[str, Path], meta: Optional[dict] = None) -> None:
        arrays = {"names": np.asarray(self.names), "domains": self.domains,
                  "domain_names": np.asarray(self.domain_names), "overlap": self.overlap,
                  "distance": self.distance, "trans": self.trans,
                  "meta": np.asarray(json.dumps(meta or {}))}
        for kind, (indptr, indices) in self.lists.items():
            arrays[f"{kind}_indptr"] = indptr
            arrays[f"{kind}_indices"] = indices
        io.save_npz(path, **arrays)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "PairMining":
        try:
            with np.load(path, allow_pickle=False) as z:
                lists = {k: (z[f"{k}_indptr"], z[f"{k}_indices"]) for k in LIST_KINDS}
                return cls(names=[str(s) for s in z["names"]], domains=z["domains"],
                           domain_names=[str(s) for s in z["domain_names"]], overlap=z["overlap"],
                           distance=z["distance"], trans=z["trans"], lists=lists)
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable pair-mining cache ({exc})") from None


def mine_pairs(overlap: np.ndarray, poses: np.ndarray, domains: np.ndarray, cfg: MiningConfig,
               names: Optional[Sequence[str]] = None,
               domain_names: Optional[Sequence[str]] = None) -> PairMining:
    """k-reciprocal positives and negatives, within and across domains.

    Args:
        overlap: ``(N, N)`` asymmetric overlap (frustum, NSO or their mean).
        poses: ``(N, 4, 4)`` camera-to-world; domains ``(N,)`` int.

    A candidate j of anchor i (``i != j``) is

    - a *positive* when ``rank[i, j] < ceil(pos_forward * n_i)`` and ``rank[j, i] < ceil(pos_backward * n_j)``
      (``n_i``: i's candidates in j's domain, ``n_j``: j's candidates in i's domain; at least one
      each), its mutual overlap exceeds ``pos_min_overlap`` and the cameras are at most
      ``pos_max_trans`` apart;
    - a *negative* when it is in the farthest ``neg_forward`` share of i's ranking and i in the
      farthest ``neg_backward`` share of j's, the cameras at least ``neg_min_trans`` apart, and it
      is not a positive.

    Lists are ``same`` when j is in i's domain, else ``cross``.
    """
    cfg.validate()
    N = len(overlap)
    domains = np.asarray(domains, dtype=np.int64)
    if overlap.shape != (N, N) or poses.shape != (N, 4, 4) or domains.shape != (N,):
        raise ValueError(f"overlap (N, N), poses (N, 4, 4) and domains (N,) must agree; got "
                         f"{overlap.shape}, {poses.shape}, {domains.shape}")
    rot, trans = pose_distance_matrices(poses)
    dist = geometric_distance(overlap, rot, trans, cfg.weight_overlap, cfg.weight_rot, cfg.weight_trans,
                              cfg.sat_rot, cfg.sat_trans)
    rank, counts = domain_ranks(dist, domains)
    n_fwd = counts[:, domains].astype(np.int32)        # (N, N): i's candidates in j's domain
    n_bwd = n_fwd.T                                    # j's candidates in i's domain
    not_self = ~np.eye(N, dtype=bool)

    def top(n: np.ndarray, share: float) -> np.ndarray:
        return np.maximum(1, np.ceil(share * n)).astype(np.int32)

    pos = (not_self & (rank < top(n_fwd, cfg.pos_forward)) & (rank.T < top(n_bwd, cfg.pos_backward))
           & (0.5 * (overlap + overlap.T) > cfg.pos_min_overlap))
    if cfg.pos_max_trans is not None:
        pos &= trans <= cfg.pos_max_trans
    neg = (not_self & (rank >= n_fwd - top(n_fwd, cfg.neg_forward))
           & (rank.T >= n_bwd - top(n_bwd, cfg.neg_backward)) & ~pos)
    if cfg.neg_min_trans is not None:
        neg &= trans >= cfg.neg_min_trans
    same = domains[:, None] == domains[None, :]
    lists = {"pos_same": _to_csr(pos & same, dist), "pos_cross": _to_csr(pos & ~same, dist),
             "neg_same": _to_csr(neg & same, dist), "neg_cross": _to_csr(neg & ~same, dist)}
    n_dom = int(domains.max()) + 1 if N else 0
    return PairMining(names=list(names) if names is not None else [str(i) for i in range(N)], domains=domains,
                      domain_names=list(domain_names) if domain_names is not None else [str(d) for d in range(n_dom)],
                      overlap=overlap.astype(np.float32), distance=dist, trans=trans, lists=lists)


def _overlap_for(geom: FrameGeometry, cfg: MiningConfig, progress: bool) -> np.ndarray:
    frustum = frustum_overlap_matrix(geom, cfg.min_depth, progress=progress)
    if cfg.overlap == "frustum":
        return frustum
    # NSO only where the frusta overlap at all: the other pairs see disjoint surfaces
    nso = nso_matrix(geom, cfg.nso_radius, candidates=(frustum > 0) | (frustum.T > 0), progress=progress)
    return nso if cfg.overlap == "nso" else 0.5 * (frustum + nso)


def cache_path(scene_dir: Path, sections: Sequence[str], geom_key: str) -> Path:
    """Where :func:`mine_scene` caches its result: ``<scene>/pairs/<sections>_<hash>.npz``."""
    return Path(scene_dir) / "pairs" / f"{'+'.join(sections)}_{geom_key}.npz"


def mine_scene(scene: Union[str, Path], sections: Sequence[str] = ("train_sim", "train_real"),
               cfg: Optional[MiningConfig] = None, root: Union[str, Path] = layout.DEFAULT_ROOT,
               domains: Optional[Sequence[str]] = None, cache: bool = True,
               progress: bool = False) -> PairMining:
    """Overlap and mined pairs of the frames of ``sections``, cached beside the scene.

    Frame index k of the result is the k-th frame of the sections in order (frame keys sorted
    within each section, as :class:`~transpose.data.scene.SceneDataset` lists them); ``names``
    holds ``section/key``. The cache name hashes the frame names, their poses and ``cfg``.
    """
    cfg = (cfg or MiningConfig()).validate()
    scene_dir = layout.resolve_scene(scene, root)
    geom = load_frame_geometry(scene_dir, sections, root, cfg.cells, cfg.seed, domains)
    h = hashlib.sha1()
    h.update(json.dumps({"cfg": asdict(cfg), "names": geom.names, "domains": geom.domains.tolist(),
                         "domain_names": geom.domain_names}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(geom.poses.round(6)).tobytes())
    path = cache_path(scene_dir, sections, h.hexdigest()[:12])
    if cache and path.is_file():
        mined = PairMining.load(path)
        if mined.names == geom.names:
            return mined
    overlap = _overlap_for(geom, cfg, progress)
    mined = mine_pairs(overlap, geom.poses, geom.domains, cfg, geom.names, geom.domain_names)
    if cache:
        mined.save(path, meta={"config": asdict(cfg), "sections": list(sections)})
    return mined
