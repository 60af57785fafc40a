"""Evaluation: localize every frame of a section, pose metrics, result files and saved maps.

The metrics (median / mean errors, accuracy at thresholds) are shared by every method (SCR and
APR); errors follow :mod:`transpose.geometry` (geodesic angle in degrees, camera-centre distance).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import geometry, io

#: (metres, degrees) thresholds: indoor (7-Scenes style) and metre-scale outdoor ones.
INDOOR_THRESHOLDS: Tuple[Tuple[float, float], ...] = ((0.02, 2.0), (0.05, 5.0), (0.10, 10.0))
OUTDOOR_THRESHOLDS: Tuple[Tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


def threshold_name(metres: float, degrees: float) -> str:
    dist = f"{metres * 100:g}cm" if metres < 1 else f"{metres:g}m"
    return f"{dist}_{degrees:g}deg"


def pose_metrics(rot_err_deg: Sequence[float], trans_err_m: Sequence[float],
                 thresholds: Iterable[Tuple[float, float]] = INDOOR_THRESHOLDS + OUTDOOR_THRESHOLDS) -> Dict[str, float]:
    """Median / mean errors and the percentage of frames within each (metres, degrees) threshold.

    Frames that failed (NaN errors) count as outside every threshold and as infinitely wrong for the
    median (so failures cannot make a method look better).
    """
    r = np.asarray(rot_err_deg, dtype=np.float64)
    t = np.asarray(trans_err_m, dtype=np.float64)
    if r.size == 0:
        raise ValueError("no frames to evaluate")
    r_inf = np.where(np.isfinite(r), r, np.inf)
    t_inf = np.where(np.isfinite(t), t, np.inf)
    ok = np.isfinite(r) & np.isfinite(t)
    out = {
        "frames": int(r.size),
        "failed": int((~ok).sum()),
        "median_rot_deg": float(np.median(r_inf)),
        "median_trans_m": float(np.median(t_inf)),
        "mean_rot_deg": float(r[ok].mean()) if ok.any() else float("nan"),
        "mean_trans_m": float(t[ok].mean()) if ok.any() else float("nan"),
    }
    for metres, degrees in thresholds:
        out[f"acc_{threshold_name(metres, degrees)}"] = float(100.0 * np.mean((t_inf < metres) & (r_inf < degrees)))
    return out


def format_metrics(m: Dict[str, float], title: str = "") -> str:
    """A short human-readable table of :func:`pose_metrics` output."""
    lines = [title] if title else []
    lines.append(f"frames {m['frames']} (failed {m['failed']})")
    lines.append(f"median error  {m['median_trans_m'] * 100:8.2f} cm  {m['median_rot_deg']:7.2f} deg")
    lines.append(f"mean error    {m['mean_trans_m'] * 100:8.2f} cm  {m['mean_rot_deg']:7.2f} deg")
    for k, v in m.items():
        if k.startswith("acc_"):
            lines.append(f"within {k[4:].replace('_', ' / '):18s} {v:6.1f} %")
    if "median_coord_error_m" in m:
        lines.append(f"median coordinate error {m['median_coord_error_m'] * 100:.1f} cm")
    if "spearman_sigma_error" in m:
        lines.append(f"Spearman(sigma, coordinate error) {m['spearman_sigma_error']:.3f}")
    for k in ("ms_network", "ms_ransac", "ms_total"):
        if k in m:
            lines.append(f"{k[3:]:9s} time  {m[k]:8.1f} ms / frame (median)")
    return "\n".join(lines)


def spearman_correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation of two samples (average ranks for ties); NaN pairs are dropped."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 3:
        return float("nan")

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="mergesort")
        r = np.empty(x.size)
        r[order] = np.arange(x.size, dtype=np.float64)
        # average the ranks of ties
        _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return sums[inv] / counts[inv]

    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


# --------------------------------------------------------------------------- SCR localization

@dataclass
class RansacOptions:
    """DSAC*'s test-time RANSAC settings (flag names as DSAC*'s test.py)."""

    hypotheses: int = 64
    threshold: float = 10.0          # px, soft-inlier threshold tau
    inlieralpha: float = 100.0
    maxpixelerror: float = 100.0
    adaptive: bool = False
    confidence: float = 0.999
    seed: int = 0
    uncertainty: str = "none"        # 'none', 'drop' (discard the most uncertain cells), 'weight' (1/sigma^2)
    drop_quantile: float = 0.5       # with 'drop': keep cells with sigma below this quantile
    robust_scale: float = 0.0        # px; > 0: re-fit the inliers with a Cauchy loss after the refinement


@dataclass
class FrameResult:
    name: str
    pose_est: np.ndarray
    pose_gt: np.ndarray
    rot_err_deg: float
    trans_err_m: float
    inliers: int
    ms_network: float
    ms_ransac: float
    coord_err_median: float = float("nan")
    extra: Dict[str, Any] = field(default_factory=dict)


def solve_frame(coords: Any, K: np.ndarray, sigma: Any, opts: RansacOptions,
                depth: Optional[np.ndarray] = None, stride: int = 8):
    """Run the native RANSAC on one predicted map ``coords (3, h, w)``; returns the ransac result.

    ``coords`` and ``sigma (h, w)`` are numpy arrays, or CUDA tensors for the GPU route of
    :func:`transpose.ransac.estimate_pose` (the map stays on the GPU; uncertainty masks and weights
    are made there too).
    """
    from . import ransac

    mask, weights = _uncertainty_mask_weights(sigma, opts)
    kwargs = _core_kwargs(opts)
    if depth is not None:
        # camera-frame points of the cells from the depth sampled at the cell centres (CPU only)
        coords = ransac._to_numpy(coords, "coords")
        h, w = coords.shape[1:]
        cam = geometry.backproject_depth(depth, K, pixels=geometry.cell_centers(h, w, stride))
        return ransac.estimate_pose_rgbd(cam.transpose(2, 0, 1), coords, K, mask=mask, weights=weights, **kwargs)
    return ransac.estimate_pose(coords, K, stride=stride, mask=mask, weights=weights, **kwargs)


def _uncertainty_mask_weights(sigma: Any, opts: RansacOptions) -> Tuple[Any, Any]:
    """``(mask, weights)`` for the RANSAC from a sigma array of any shape (numpy or torch) and
    ``opts.uncertainty``; None where unused."""
    mask = None
    weights = None
    if sigma is not None and opts.uncertainty == "drop":
        if hasattr(sigma, "quantile"):  # torch: same linear interpolation as np.quantile
            sigma = sigma.double()
            mask = sigma <= sigma.flatten().quantile(opts.drop_quantile)
        else:
            mask = sigma <= np.quantile(sigma, opts.drop_quantile)
    elif sigma is not None and opts.uncertainty == "weight":
        # inverse variance (measured on the demo's test frames: 1/sigma^2 30.7 % within 5 cm / 5 deg,
        # 1/sigma 22.7 %, unweighted 14.7 %)
        variance = sigma.double().clamp_min(1e-6) ** 2 if hasattr(sigma, "clamp_min") else np.maximum(sigma, 1e-6) ** 2
        weights = 1.0 / variance
    elif opts.uncertainty not in ("none", "drop", "weight"):
        raise ValueError(f"--uncertainty_use must be none, drop or weight, got '{opts.uncertainty}'")
    return mask, weights


def _core_kwargs(opts: RansacOptions) -> Dict[str, Any]:
    """The keyword arguments of :mod:`transpose.ransac`'s estimators that ``opts`` sets."""
    return dict(num_hypotheses=opts.hypotheses, threshold=opts.threshold, alpha=opts.inlieralpha,
                max_reprojection_error=opts.maxpixelerror, seed=opts.seed, adaptive=opts.adaptive,
                confidence=opts.confidence, robust_scale=opts.robust_scale)


#: test.py's ``--scales auto`` for cluster networks: the image as it is and zoomed 1.5x, pooled.
#: Measured on test_sim with networks of the demo's recipe (300 frames, within 5 cm / 5 deg): the demo's
#: 10-minute network 51.0 -> 70.0 %, 20-minute ones 56.3 -> 70.7, 59.7 -> 71.7, 62.3 -> 70.0, 53.7 ->
#: 71.3 % (medians 4.3-4.7 -> 3.3-3.4 cm). On one of them 1 + 1.25 gave 68.3 %, 1 + 1.75 71.3 %,
#: 1 + 1.25 + 1.5 69.3 %, 1.25 or 1.5 alone 65.7 / 61.7 %, 1 + 0.8 + 1.25 69.3 %; half-cell shifts or
#: +-5 deg rotations at scale 1 stayed within 3 points of 1 alone (their errors are those of the same
#: view). Fine-tuned sim-to-real networks on test_real: medians -5 to -19 % without a readout, -8 to
#: -25 % with one.
CLUSTER_TEST_SCALES: Tuple[float, ...] = (1.0, 1.5)


@dataclass
class ZoomedCells:
    """The cells of one forward pass (of the image as it is, or zoomed), placed in the original image.

    Attributes:
        coords: ``(3, h, w)`` predicted scene coordinates.
        sigma: ``(h, w)`` predicted uncertainty, or None.
        pixels: ``(h, w, 2)`` where each cell centre lies in the original image (its pixels).
    """

    coords: np.ndarray
    sigma: Optional[np.ndarray]
    pixels: np.ndarray


def check_scales(scales: Sequence[float]) -> Tuple[float, ...]:
    """Validated test scales: 1 (the image as it is) first, then the zooms, each > 1 and listed once."""
    scales = tuple(float(s) for s in scales)
    if 1.0 not in scales:
        raise ValueError(f"scales {list(scales)}: must include 1 (coordinate errors and saved maps are those "
                         "of the image as it is)")
    bad = [s for s in scales if not (s >= 1.0 and np.isfinite(s))]
    if bad:
        raise ValueError(f"scales: {bad[0]} is not a zoom >= 1 (a shrunk image would need antialiasing the "
                         "networks never saw)")
    if len(set(scales)) != len(scales):
        raise ValueError(f"scales {list(scales)}: a scale is listed twice")
    return (1.0,) + tuple(s for s in scales if s != 1.0)


def zoomed_cells(net, image: Any, K: np.ndarray, scale: float, stride: int = 8) -> ZoomedCells:
    """Predict the cells of ``image (C, H, W)`` (a normalised tensor) zoomed by ``scale`` about its centre.

    The zoom is the training augmentation's (:func:`transpose.data.augment.view_transform`, bilinear),
    centred on a canvas of whole cells that covers all of it, the edge pixels repeated outwards: at 1.5
    a 160x120 image becomes 240x184, 30x23 cells of 8 px, each seeing two thirds of what a cell of the
    image as it is sees. (Cropped to whole cells instead, 240x176, the demo network lost 5 points
    within 5 cm / 5 deg and four 20-minute networks 0.2-0.3 cm of median error.) Runs under the
    caller's ``torch.no_grad``.
    """
    from .data.augment import map_points, view_transform, warp_image

    C, H, W = image.shape
    size = (stride * math.ceil(H * scale / stride), stride * math.ceil(W * scale / stride))
    view = view_transform(np.asarray(K, dtype=np.float64), (H, W), scale=scale, size_out=size)
    zoomed = warp_image(image.cpu(), view.M, view.size, padding="border")
    device = next(net.parameters()).device
    coords, sigma = net(zoomed[None].to(device))
    coords = coords[0].double().cpu().numpy()
    h, w = coords.shape[1:]
    return ZoomedCells(coords, None if sigma is None else sigma[0, 0].double().cpu().numpy(),
                       map_points(view.M, geometry.cell_centers(h, w, stride)))


def solve_pooled(cells: Sequence[ZoomedCells], K: np.ndarray, opts: RansacOptions,
                 depth: Optional[np.ndarray] = None):
    """One pose from the cells of several passes (e.g. the image as it is and zoomed), pooled.

    The correspondences of every pass go into one RANSAC: the passes' errors differ (each cell sees
    a different patch), so together they pin the pose better than any one of them. Uncertainty
    masks and weights are computed over the pooled cells. ``depth (H, W)`` (the image's, pixel
    ``(x, y)`` at index ``[y, x]``) turns on the RGB-D route, sampled at the nearest pixel of each
    cell centre. The result's ``inliers`` are ``(N,)``, the passes' cells in order.
    """
    from . import ransac

    pixels = np.concatenate([c.pixels.reshape(-1, 2) for c in cells])
    points = np.concatenate([c.coords.reshape(3, -1).T for c in cells])
    sigma = None
    if any(c.sigma is not None for c in cells):
        if any(c.sigma is None for c in cells):
            raise ValueError("solve_pooled: either every pass has sigma or none does")
        sigma = np.concatenate([c.sigma.reshape(-1) for c in cells])
    mask, weights = _uncertainty_mask_weights(sigma, opts)
    kwargs = _core_kwargs(opts)
    if depth is not None:
        from .data.augment import sample_nearest

        d, inside = sample_nearest(np.asarray(depth, dtype=np.float64)[None], pixels, 1)
        cam = geometry.backproject_depth(np.where(inside, d[0], np.nan)[:, None], K, pixels=pixels[:, None])[:, 0]
        return ransac.estimate_pose_rgbd(cam, points, K, mask=mask, weights=weights, **kwargs)
    return ransac.estimate_pose_from_points(pixels, points, K, mask=mask, weights=weights, **kwargs)


def localize_section(net, dataset, opts: RansacOptions, device=None, rgbd: bool = False,
                     save_map_dir: Optional[Path] = None, progress: bool = True,
                     scales: Sequence[float] = (1.0,)) -> List[FrameResult]:
    """Localize every frame of ``dataset`` (a SceneDataset in 'scr' mode) with ``net`` and the native core.

    Coordinate errors are measured against the dataset's targets (depth, or ``init/`` with sparse
    targets); with ``save_map_dir`` an ``.npz`` per frame holds the predicted coordinates, sigma, the
    coordinate error map and the pose errors. ``scales`` other than 1 add a forward pass of the image
    zoomed by each (:func:`zoomed_cells`) whose cells join the RANSAC (:func:`solve_pooled`, on the
    CPU); errors, maps and sigma statistics stay those of the image as it is.
    """
    import torch

    zooms = check_scales(scales)[1:]
    device = device or next(net.parameters()).device
    results: List[FrameResult] = []
    iterator = range(len(dataset))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="localize", unit="frame", dynamic_ncols=True, mininterval=1.0)
    stride = getattr(dataset, "stride", 8)
    for index in iterator:
        item = dataset[index]
        t0 = time.perf_counter()
        K = item["K"].double().numpy()
        with torch.no_grad():
            coords_t, sigma_t = net(item["image"][None].to(device))
            zoomed = [zoomed_cells(net, item["image"], K, s, stride) for s in zooms]
        # A network on a GPU hands its map to the GPU RANSAC as it is (no copy to the host for the
        # solve) when the extension has the CUDA kernels; RGB-D, adaptive RANSAC and pooled scales
        # run on the CPU.
        on_gpu = (coords_t.is_cuda and not rgbd and not opts.adaptive and not zoomed
                  and _gpu_ransac_available())
        if on_gpu:
            torch.cuda.synchronize(coords_t.device)  # so that ms_network is the network's time
            coords_in = coords_t[0]
            sigma_in = None if sigma_t is None else sigma_t[0, 0]
        else:
            coords_in = coords_t[0].double().cpu().numpy()
            sigma_in = None if sigma_t is None else sigma_t[0, 0].double().cpu().numpy()
        t1 = time.perf_counter()
        h, w = coords_t.shape[-2:]
        depth = None
        if rgbd:
            if "depth" not in item:
                raise ValueError(f"{dataset.section_dir}: --mode 2 (RGB-D) needs depth/ images")
            depth = item["depth"].numpy()
        if zoomed:
            own = ZoomedCells(coords_in, sigma_in, geometry.cell_centers(h, w, stride))
            result = solve_pooled([own] + zoomed, K, opts, depth=depth)
            # the image's own cells come first among the pooled ones (num_inliers counts them all)
            result = dataclasses.replace(result, inliers=np.asarray(result.inliers)[: h * w].reshape(h, w))
        else:
            depth_cells = None if depth is None else depth[stride // 2::stride, stride // 2::stride][:h, :w]
            result = solve_frame(coords_in, K, sigma_in, opts, depth=depth_cells, stride=stride)
        t2 = time.perf_counter()
        # Metrics and saved maps after the timed part (on the GPU route only what they need comes over).
        sigma = sigma_t[0, 0].double().cpu().numpy() if on_gpu and sigma_t is not None else sigma_in
        pose_gt = item["pose"].double().numpy()
        rot, trans = geometry.pose_errors(result.pose, pose_gt)
        err_map = np.full((h, w), np.nan)
        if "coords" in item:
            mask = item["mask"].numpy()
            if on_gpu:
                target = item["coords"].to(coords_t.device, torch.float64)
                err = torch.linalg.vector_norm(coords_t[0].double() - target, dim=0).cpu().numpy()
            else:
                err = np.linalg.norm(coords_in - item["coords"].double().numpy(), axis=0)
            err_map[mask] = err[mask]
        fr = FrameResult(item["name"], result.pose, pose_gt, float(rot), float(trans), int(result.num_inliers),
                         1000 * (t1 - t0), 1000 * (t2 - t1),
                         float(np.nanmedian(err_map)) if np.isfinite(err_map).any() else float("nan"))
        if sigma is not None and np.isfinite(err_map).any():
            # a fixed-seed subsample of (sigma, error) pairs for the pooled rank correlation
            cells = np.flatnonzero(np.isfinite(err_map))
            pick = np.random.default_rng(index).choice(cells, size=min(256, cells.size), replace=False)
            fr.extra["sigma_error"] = np.stack([sigma.reshape(-1)[pick], err_map.reshape(-1)[pick]])
        results.append(fr)
        if save_map_dir is not None:
            coords = coords_t[0].double().cpu().numpy() if on_gpu else coords_in
            maps = {"coords": coords.astype(np.float32), "coord_error": err_map.astype(np.float32),
                    "pose_est": result.pose, "pose_gt": pose_gt, "K": K,
                    "rot_err_deg": np.float64(rot), "trans_err_m": np.float64(trans),
                    "inlier_mask": np.asarray(result.inliers)}
            if sigma is not None:
                maps["sigma"] = sigma.astype(np.float32)
            grey = item["image"][0].numpy() * dataset.std[0] + dataset.mean[0]
            maps["image"] = (np.clip(grey, 0, 1) * 255).astype(np.uint8)
            if item.get("depth") is not None:
                maps["depth"] = item["depth"].numpy()[stride // 2::stride, stride // 2::stride][:h, :w]
            io.save_npz(Path(save_map_dir) / f"{item['name']}.npz", **maps)
    return results


def _gpu_ransac_available() -> bool:
    """The GPU RANSAC route can run (CUDA kernels compiled in, a CUDA device usable)."""
    from .ransac_gpu import cuda_available

    return cuda_available()


def summarize(results: Sequence[FrameResult]) -> Dict[str, float]:
    """Pose metrics plus median timings and coordinate error of a list of frame results."""
    m = pose_metrics([r.rot_err_deg for r in results], [r.trans_err_m for r in results])
    m["ms_network"] = float(np.median([r.ms_network for r in results]))
    m["ms_ransac"] = float(np.median([r.ms_ransac for r in results]))
    m["ms_total"] = float(np.median([r.ms_network + r.ms_ransac for r in results]))
    errs = [r.coord_err_median for r in results if np.isfinite(r.coord_err_median)]
    if errs:
        m["median_coord_error_m"] = float(np.median(errs))
    pairs = [r.extra["sigma_error"] for r in results if "sigma_error" in r.extra]
    if pairs:
        both = np.concatenate(pairs, axis=1)
        m["spearman_sigma_error"] = spearman_correlation(both[0], both[1])
    return m


POSE_FILE_HEADER = ("# name qw qx qy qz tx ty tz rot_err_deg trans_err_m inliers\n"
                    "# estimated camera-to-world pose: q (w x y z) rotates camera to world, t is the camera centre\n")


def write_pose_file(path: Path, results: Sequence[FrameResult]) -> None:
    """One line per frame: name, quaternion (w x y z), translation, errors, inlier count."""
    lines = [POSE_FILE_HEADER.rstrip("\n")]
    for r in results:
        q = geometry.rotmat_to_quat(r.pose_est[:3, :3])
        t = r.pose_est[:3, 3]
        lines.append(f"{r.name} {q[0]:.8f} {q[1]:.8f} {q[2]:.8f} {q[3]:.8f} {t[0]:.6f} {t[1]:.6f} {t[2]:.6f} "
                     f"{r.rot_err_deg:.4f} {r.trans_err_m:.5f} {r.inliers}")
    io.write_text(path, "\n".join(lines) + "\n")


def read_pose_file(path: Path) -> Dict[str, Dict[str, Any]]:
    """Parse a pose file written by :func:`write_pose_file`: name -> pose (4x4) and errors."""
    out: Dict[str, Dict[str, Any]] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 11:
            raise ValueError(f"{path}:{lineno}: expected 11 fields, got {len(parts)}")
        vals = [float(v) for v in parts[1:10]]
        pose = geometry.make_pose(geometry.quat_to_rotmat(vals[0:4]), vals[4:7])
        out[parts[0]] = {"pose": pose, "rot_err_deg": vals[7], "trans_err_m": vals[8], "inliers": int(parts[10])}
    return out


def write_results(out_dir: Path, results: Sequence[FrameResult], summary: Dict[str, float],
                  settings: Dict[str, Any], title: str = "") -> Dict[str, Path]:
    """Write ``poses.txt``, ``results.json`` and ``results.txt`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    paths = {"poses": out_dir / "poses.txt", "json": out_dir / "results.json", "text": out_dir / "results.txt"}
    write_pose_file(paths["poses"], results)
    io.write_json(paths["json"], {"summary": summary, "settings": settings,
                                  "frames": [{"name": r.name, "rot_err_deg": r.rot_err_deg,
                                              "trans_err_m": r.trans_err_m, "inliers": r.inliers,
                                              "ms_network": r.ms_network, "ms_ransac": r.ms_ransac,
                                              "coord_err_median_m": r.coord_err_median,
                                              "pose_est": r.pose_est.tolist(), "pose_gt": r.pose_gt.tolist()}
                                             for r in results]})
    io.write_text(paths["text"], format_metrics(summary, title) + "\n")
    return paths


__all__ = ["INDOOR_THRESHOLDS", "OUTDOOR_THRESHOLDS", "CLUSTER_TEST_SCALES", "pose_metrics", "format_metrics", "RansacOptions",
           "FrameResult", "spearman_correlation", "solve_frame", "ZoomedCells", "check_scales", "zoomed_cells",
           "solve_pooled", "localize_section", "summarize", "write_pose_file", "read_pose_file",
           "write_results"]
