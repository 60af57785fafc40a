"""Figures (matplotlib, PNG): uncertainty maps, error curves, training curves, coordinate maps, trajectories.

Everything reads the files ``test.py`` writes (``results.json``, ``maps/<frame>.npz`` with
``--save_map``) and the training ``log.csv``, so figures can be redrawn without re-running anything.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .evaluate import spearman_correlation


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from . import io

    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def load_maps(maps_dir: Path) -> Dict[str, Dict[str, np.ndarray]]:
    """Every ``maps/<frame>.npz`` of a test output folder, by frame name."""
    out = {}
    for p in sorted(Path(maps_dir).glob("*.npz")):
        with np.load(p) as z:
            out[p.stem] = {k: z[k] for k in z.files}
    return out


def coords_to_rgb(coords: np.ndarray, lo: Optional[np.ndarray] = None, hi: Optional[np.ndarray] = None) -> np.ndarray:
    """Coordinates ``(3, h, w)`` -> RGB ``(h, w, 3)`` in [0, 1], x/y/z scaled between ``lo`` and ``hi``
    (default: the 2nd and 98th percentiles)."""
    flat = coords.reshape(3, -1)
    lo = np.percentile(flat, 2, axis=1) if lo is None else lo
    hi = np.percentile(flat, 98, axis=1) if hi is None else hi
    rgb = (coords - lo[:, None, None]) / np.maximum(hi - lo, 1e-9)[:, None, None]
    return np.clip(rgb.transpose(1, 2, 0), 0, 1)


def figure_uncertainty(maps: Dict[str, Dict[str, np.ndarray]], fig_dir: Path) -> List[Path]:
    """Sigma over the image next to the coordinate error (one frame), sigma vs error, error vs depth."""
    plt = _plt()
    with_sigma = {k: v for k, v in maps.items() if "sigma" in v}
    if not with_sigma:
        raise ValueError("uncertainty figures need maps with sigma (a network trained with --uncertainty, "
                         "tested with --save_map)")
    names = sorted(with_sigma, key=lambda k: float(with_sigma[k]["trans_err_m"]))
    name = names[len(names) // 2]  # the frame of median error: typical, not cherry-picked
    m = with_sigma[name]
    paths = []
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    if "image" in m:
        ax[0].imshow(m["image"], cmap="gray")
    ax[0].set_title(f"{name}")
    im = ax[1].imshow(m["sigma"], cmap="magma")
    ax[1].set_title("predicted sigma (m)")
    fig.colorbar(im, ax=ax[1], fraction=0.035)
    err = m["coord_error"]
    im = ax[2].imshow(err, cmap="magma", vmin=0, vmax=np.nanpercentile(err, 98) if np.isfinite(err).any() else 1)
    ax[2].set_title("coordinate error (m)")
    fig.colorbar(im, ax=ax[2], fraction=0.035)
    for a in ax:
        a.axis("off")
    paths.append(_save(fig, fig_dir / "uncertainty_map.png"))

    sig = np.concatenate([v["sigma"].ravel() for v in with_sigma.values()])
    err = np.concatenate([v["coord_error"].ravel() for v in with_sigma.values()])
    ok = np.isfinite(sig) & np.isfinite(err)
    rho = spearman_correlation(sig[ok], err[ok])
    rng = np.random.default_rng(0)
    pick = rng.choice(np.flatnonzero(ok), size=min(5000, int(ok.sum())), replace=False) if ok.any() else []
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].scatter(sig[pick], np.maximum(err[pick], 1e-4), s=3, alpha=0.3)
    ax[0].set_xscale("log")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("predicted sigma (m)")
    ax[0].set_ylabel("coordinate error (m)")
    ax[0].set_title(f"sigma vs error, Spearman {rho:.3f}")
    lim = [max(1e-4, min(sig[ok].min(), err[ok].min())), max(sig[ok].max(), err[ok].max())] if ok.any() else [1e-3, 1]
    ax[0].plot(lim, lim, "k--", lw=0.8, label="error = sigma")
    ax[0].legend()
    if all("depth" in v for v in with_sigma.values()):
        depth = np.concatenate([v["depth"].ravel() for v in with_sigma.values()])
        okd = ok & (depth > 0)
        if okd.any():
            bins = np.quantile(depth[okd], np.linspace(0, 1, 11))
            idx = np.clip(np.digitize(depth[okd], bins[1:-1]), 0, 9)
            med = [np.median(err[okd][idx == b]) if (idx == b).any() else np.nan for b in range(10)]
            msig = [np.median(sig[okd][idx == b]) if (idx == b).any() else np.nan for b in range(10)]
            centres = 0.5 * (bins[1:] + bins[:-1])
            ax[1].plot(centres, med, "o-", label="median coordinate error")
            ax[1].plot(centres, msig, "s--", label="median sigma")
            ax[1].set_xlabel("depth (m)")
            ax[1].set_ylabel("metres")
            ax[1].legend()
            ax[1].set_title("error against depth")
    else:
        ax[1].axis("off")
    paths.append(_save(fig, fig_dir / "uncertainty_vs_error.png"))
    return paths


def figure_results(results: dict, fig_dir: Path) -> List[Path]:
    """Cumulative distributions of translation and rotation errors."""
    plt = _plt()
    frames = results["frames"]
    t = np.sort([f["trans_err_m"] for f in frames])
    r = np.sort([f["rot_err_deg"] for f in frames])
    y = np.arange(1, len(t) + 1) / len(t) * 100
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot(t * 100, y)
    ax[0].set_xlabel("translation error (cm)")
    ax[1].plot(r, y)
    ax[1].set_xlabel("rotation error (deg)")
    for a, lim in zip(ax, (5, 5)):
        a.set_ylabel("% of frames")
        a.axvline(lim, color="k", ls="--", lw=0.8)
        a.set_xscale("symlog", linthresh=1)
        a.grid(alpha=0.3)
    s = results["summary"]
    fig.suptitle(f"median {s['median_trans_m'] * 100:.1f} cm / {s['median_rot_deg']:.2f} deg, "
                 f"{s.get('acc_5cm_5deg', float('nan')):.1f} % within 5 cm / 5 deg")
    return [_save(fig, fig_dir / "error_cdf.png")]


def figure_loss(log_csv: Path, fig_dir: Path) -> List[Path]:
    """Training curves from a ``log.csv``."""
    from .train.logger import read_csv_log

    plt = _plt()
    cols = read_csv_log(log_csv)
    it = np.asarray(cols.get("iteration", []))
    keys = [k for k in ("loss", "loss_coords", "nll", "coord_error", "valid") if k in cols]
    fig, ax = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), squeeze=False)
    for a, k in zip(ax[0], keys):
        a.plot(it, cols[k])
        a.set_title(k)
        a.set_xlabel("iteration")
        if k in ("loss_coords", "coord_error") and np.nanmin(cols[k]) > 0:
            a.set_yscale("log")
        a.grid(alpha=0.3)
    return [_save(fig, fig_dir / "training_curves.png")]


def figure_coords(maps: Dict[str, Dict[str, np.ndarray]], fig_dir: Path, count: int = 4) -> List[Path]:
    """Predicted coordinate maps as RGB for a few frames (one colour scale for all)."""
    plt = _plt()
    names = sorted(maps)[:: max(1, len(maps) // count)][:count]
    allc = np.concatenate([maps[n]["coords"].reshape(3, -1) for n in names], axis=1)
    lo, hi = np.percentile(allc, 2, axis=1), np.percentile(allc, 98, axis=1)
    fig, ax = plt.subplots(2, len(names), figsize=(3.2 * len(names), 5), squeeze=False)
    for j, n in enumerate(names):
        if "image" in maps[n]:
            ax[0, j].imshow(maps[n]["image"], cmap="gray")
        ax[0, j].set_title(n, fontsize=8)
        ax[1, j].imshow(coords_to_rgb(maps[n]["coords"], lo, hi))
        for a in ax[:, j]:
            a.axis("off")
    return [_save(fig, fig_dir / "coordinate_maps.png")]


def figure_trajectory(results: dict, fig_dir: Path) -> List[Path]:
    """Top view of estimated against true camera centres (the two main axes of the true path)."""
    plt = _plt()
    gt = np.array([np.asarray(f["pose_gt"])[:3, 3] for f in results["frames"]])
    est = np.array([np.asarray(f["pose_est"])[:3, 3] for f in results["frames"]])
    centre = gt.mean(axis=0)
    _, _, vt = np.linalg.svd(gt - centre, full_matrices=False)
    axes = vt[:2]
    g2, e2 = (gt - centre) @ axes.T, (est - centre) @ axes.T
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot(g2[:, 0], g2[:, 1], "-", color="0.6", lw=1, label="ground truth")
    ax.scatter(g2[:, 0], g2[:, 1], s=8, color="0.4")
    err = np.array([f["trans_err_m"] for f in results["frames"]])
    sc = ax.scatter(e2[:, 0], e2[:, 1], c=np.minimum(err, 0.5), s=14, cmap="viridis_r", label="estimated")
    for a, b in zip(g2, e2):
        ax.plot([a[0], b[0]], [a[1], b[1]], color="r", lw=0.5, alpha=0.6)
    fig.colorbar(sc, ax=ax, label="translation error (m, clipped at 0.5)")
    ax.set_aspect("equal")
    ax.set_xlabel("main axis 1 (m)")
    ax.set_ylabel("main axis 2 (m)")
    ax.legend(loc="best")
    return [_save(fig, fig_dir / "trajectory.png")]


KEYWORDS = ("uncertainty", "results", "loss", "coords", "trajectory")


def make_figures(output_dir: Path, keywords: List[str], log: Optional[Path] = None,
                 figures_dir: Optional[Path] = None) -> Dict[str, object]:
    """Draw the requested figures from a test output folder; return ``{"dir": ..., "files": [...]}``."""
    output_dir = Path(output_dir)
    bad = [k for k in keywords if k not in KEYWORDS]
    if bad:
        raise ValueError(f"--keywords: unknown {', '.join(bad)} (choose from {', '.join(KEYWORDS)})")
    results_path = output_dir / "results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path}: not found (run test.py first)")
    results = json.loads(results_path.read_text())
    fig_dir = Path(figures_dir) if figures_dir else output_dir / "figures"
    maps_dir = output_dir / "maps"
    needs_maps = {"uncertainty", "coords"} & set(keywords)
    maps = load_maps(maps_dir) if needs_maps else {}
    if needs_maps and not maps:
        raise FileNotFoundError(f"{maps_dir}: no maps (run test.py with --save_map)")
    files: List[Path] = []
    for k in keywords:
        if k == "uncertainty":
            files += figure_uncertainty(maps, fig_dir)
        elif k == "results":
            files += figure_results(results, fig_dir)
        elif k == "coords":
            files += figure_coords(maps, fig_dir)
        elif k == "trajectory":
            files += figure_trajectory(results, fig_dir)
        elif k == "loss":
            if log is None:
                net = results.get("settings", {}).get("network")
                log = Path(str(Path(net).with_suffix("")) + "_log") / "log.csv" if net else None
            if log is None or not Path(log).is_file():
                raise FileNotFoundError(f"{log}: training log not found (give --log path/to/log.csv)")
            files += figure_loss(Path(log), fig_dir)
    for f in files:
        print(f"wrote {f}")
    return {"dir": fig_dir, "files": files}


def figure_apr_batch_eval(rows: List[dict], path: Path, title: str = "") -> Path:
    """Median translation (cm) and rotation (deg) errors against the training iteration of each
    checkpoint (rows of :func:`transpose.train.apr.batch_evaluate`); written to ``path`` (PNG)."""
    plt = _plt()
    rows = sorted(rows, key=lambda r: int(r["iteration"]))
    it = np.array([int(r["iteration"]) for r in rows])
    t = np.array([float(r["median_trans_m"]) for r in rows]) * 100.0
    rot = np.array([float(r["median_rot_deg"]) for r in rows])
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for a, values, label in ((ax[0], t, "median translation error (cm)"), (ax[1], rot, "median rotation error (deg)")):
        a.plot(it, values, marker="o")
        a.set_xlabel("training iteration")
        a.set_ylabel(label)
        a.grid(alpha=0.3)
        if len(values) and np.all(np.isfinite(values)) and values.min() > 0 and values.max() / values.min() > 20:
            a.set_yscale("log")
    best = int(np.nanargmin(t)) if len(t) else 0
    if len(rows):
        fig.suptitle(title or f"best median translation: iteration {it[best]} "
                     f"({t[best]:.1f} cm / {rot[best]:.2f} deg)")
    return _save(fig, Path(path))
