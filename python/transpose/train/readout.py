"""Closed-form readout of a cluster network's offsets (fitted after training, in seconds).

A cluster head (``SCRNet(num_clusters=K)``) says which of K k-means clusters of the scene a cell
sees; its offset from that cluster's centre barely learns in a CPU budget (an offset jumps at every
cluster border, a sawtooth the trunk does not fit), so coordinates stay quantised to the centres.
Yet the head's features do say where in the cluster a cell lies. This module fits, per cluster, a
ridge regression from those features to the offset, over every labelled cell of the training frames
(one plain pass and some augmented passes), in closed form: the buffer-and-solve idea of ACE, for
the last layer only.

Features are first projected on their ``dim`` leading principal components, standardised, so that
the per-cluster systems stay small ((dim + 1)^2 numbers per cluster, accumulated in blocks of cells:
memory does not grow with the number of frames) and the ridge weight ``ridge`` reads as a number of
pseudo-observations pulling a cluster's map towards zero.

Measured on the demo network (1024 clusters, 160x120 images, 225 training frames, 75 test_sim
frames): median coordinate error 12.4 -> 5.4 cm, cells within 5 cm 10 -> 47 %, frames within
5 cm / 5 deg 26.7 -> 41-47 %.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Dict, Iterable, Optional, Tuple

import torch

from ..data.scene import section_repeats
from ..evaluate import CLUSTER_TEST_SCALES
from ..losses import nearest_cluster
from ..models.scr import SCRNet

#: Default readout settings (also train_init's flag defaults). 256 components (all of the demo
#: network's head channels, a half of DSAC*'s full width): fitted over 4 passes on the zooms test.py
#: pools, the linear maps use the capacity. Measured on three networks of the demo recipe (300
#: test_sim frames, test.py defaults): 2 passes at 64 components 74.3 / 72.7 / 73.7 % within
#: 5 cm / 5 deg, 4 passes at 128 84.0 / 79.7 / 78.3 %, 4 passes at 256 84.0 / 81.0 / 79.7 %
#: (median 2.73 -> 2.22 cm on the first); 8 passes no better than 4.
DEFAULT_DIM = 256
DEFAULT_RIDGE = 10.0
#: Cells sampled for the principal components (enough for 256 components of a 512-channel head).
PCA_CELLS = 65536


#: The zoom range of the readout's augmented passes when train_init and ``transpose readout`` fit
#: it: that of the views test.py pools for cluster networks (the image as it is to 1.5x), so that
#: the linear maps are fitted on the features they will read. Measured (2 passes, test_sim, 300
#: frames, test.py defaults): against the training's own 0.8-1.25, the demo network 71.7 -> 74.3 %
#: within 5 cm / 5 deg (median 3.46 -> 3.06 cm), a 20-minute network 69.7 -> 74.3 % (3.58 -> 2.94 cm);
#: with 3 passes 69.3 -> 74.3 % (3.52 -> 2.93 cm).
TEST_ZOOM: Tuple[float, float] = (1.0, max(CLUSTER_TEST_SCALES))


def pca_basis(samples: torch.Tensor, dim: int) -> tuple:
    """``(mean (C,), basis (C, dim))`` of feature ``samples (N, C)``: the ``dim`` leading principal
    directions, each divided by the standard deviation along it (projections have unit variance).
    Directions without variance keep a zero column."""
    x = samples.double()
    mean = x.mean(dim=0)
    cov = (x - mean).T @ (x - mean) / max(len(x) - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)                  # ascending
    dim = min(dim, x.shape[1])
    evals, evecs = evals.flip(0)[:dim], evecs.flip(1)[:, :dim]
    std = evals.clamp_min(0).sqrt()
    scale = torch.where(std > 1e-8 * std.max().clamp_min(1e-30), 1.0 / std, torch.zeros_like(std))
    return mean.float(), (evecs * scale).float()


class ReadoutSystem:
    """Per-cluster normal equations of ``offset = [z, 1] W_k``, accumulated in blocks of cells.

    Args:
        num_clusters: K.
        dim: length of the projected features ``z``.
    """

    def __init__(self, num_clusters: int, dim: int):
        self.A = torch.zeros(num_clusters, dim + 1, dim + 1, dtype=torch.float64)
        self.b = torch.zeros(num_clusters, dim + 1, 3, dtype=torch.float64)
        self.yy = torch.zeros(num_clusters, dtype=torch.float64)   # sum of squared offsets
        self.count = torch.zeros(num_clusters, dtype=torch.long)  # cells added
        self.weight = torch.zeros(num_clusters, dtype=torch.float64)  # their summed weights
        self._pending: list = []
        self._pending_cells = 0

    def add(self, z: torch.Tensor, offsets: torch.Tensor, labels: torch.Tensor, weight: float = 1.0,
            chunk: int = 65536) -> None:
        """Add cells: projected features ``z (N, dim)``, target offsets ``(N, 3)``, clusters ``labels (N,)``,
        each counting ``weight`` times in the least squares (as if added ``weight`` times).

        Cells are buffered and accumulated ``chunk`` at a time, grouped by cluster: one
        ``(n_k, dim + 1)`` matrix product per cluster instead of a ``(dim + 1)^2`` outer product per
        cell, which made the fit's accumulation several times slower than its forward passes at
        ``dim`` 128. :meth:`solve` (or :meth:`flush`) adds what is still buffered.
        """
        if not weight > 0:
            raise ValueError(f"readout: a cell weight must be positive, got {weight}")
        root = torch.full((len(z),), float(weight) ** 0.5, dtype=torch.float64)
        self._pending.append((z.detach().double(), offsets.detach().double(), labels.detach().long(), root))
        self._pending_cells += len(z)
        if self._pending_cells >= chunk:
            self.flush()

    def flush(self) -> None:
        """Accumulate the buffered cells into the per-cluster normal equations."""
        if not self._pending:
            return
        z, y, k, root = (torch.cat(parts) for parts in zip(*self._pending))
        self._pending, self._pending_cells = [], 0
        order = torch.argsort(k, stable=True)
        # weighted least squares: each row (features, bias and target) scaled by sqrt(weight)
        root = root[order, None]
        zc = torch.cat([z[order], z.new_ones(len(z), 1)], 1) * root
        y, k = y[order] * root, k[order]
        labels, counts = torch.unique_consecutive(k, return_counts=True)
        start = 0
        for label, n in zip(labels.tolist(), counts.tolist()):
            block = zc[start:start + n]
            self.A[label] += block.T @ block
            self.b[label] += block.T @ y[start:start + n]
            start += n
        self.yy.index_add_(0, k, (y * y).sum(dim=1))
        self.weight.index_add_(0, k, root[:, 0] ** 2)
        self.count.index_add_(0, k, torch.ones_like(k))

    def solve(self, ridge: float, block: int = 256) -> tuple:
        """``(weights (K, dim + 1, 3), rms before, rms after)``: the ridge solution per cluster (no
        penalty on the bias; zero for clusters without cells) and the root-mean-square offset of the
        accumulated cells with the centre alone and with the fitted readout. Solved ``block``
        clusters at a time, so that the copies the solver makes stay a fraction of the system (which
        is K (dim + 1)^2 float64 numbers: 0.54 GB for 1024 clusters at dim 256)."""
        self.flush()
        K, n = self.A.shape[:2]
        penalty = torch.full((n,), float(ridge), dtype=torch.float64)
        penalty[-1] = 0.0
        regulariser = torch.diag(penalty) + 1e-9 * torch.eye(n, dtype=torch.float64)
        W = torch.zeros(K, n, 3, dtype=torch.float64)
        rss = torch.zeros(K, dtype=torch.float64)
        for s in range(0, K, block):
            A, b, w = self.A[s:s + block], self.b[s:s + block], W[s:s + block]
            seen = self.count[s:s + block] > 0
            if seen.any():
                w[seen] = torch.linalg.solve(A[seen] + regulariser, b[seen])
            # residual sum of squares from the normal equations: y'y - 2 w'b + w'Aw
            rss[s:s + block] = (self.yy[s:s + block] - 2 * (w * b).sum(dim=(1, 2))
                                + torch.einsum("kic,kij,kjc->k", w, A, w))
        total = max(float(self.weight.sum()), 1e-30)  # (weighted) cells
        rms_before = float((self.yy.sum() / total).sqrt())
        rms_after = float((rss.clamp_min(0).sum() / total).sqrt())
        return W.float(), rms_before, rms_after


def _cells(model, item: Dict[str, Any], device) -> Optional[tuple]:
    """``(features (N, C), targets (N, 3))`` of the labelled cells of one dataset item."""
    if "coords" not in item or not item["mask"].any():
        return None
    with torch.no_grad():
        x = coordinate_network(model).head_features(model.encode(item["image"][None].to(device)))[0]
    mask = item["mask"]
    return x.cpu().permute(1, 2, 0)[mask].float(), item["coords"].permute(1, 2, 0)[mask].float()


def coordinate_network(model) -> SCRNet:
    """The SCRNet of ``model``: itself, or the one inside a TransPose network."""
    return getattr(model, "scr", model)


def fit_cluster_readout(model, datasets, passes: int = 4, dim: int = DEFAULT_DIM,
                        ridge: float = DEFAULT_RIDGE, seed: int = 0, progress: bool = True,
                        zoom: Optional[Tuple[float, float]] = None, balance: bool = True) -> Dict[str, Any]:
    """Fit and install the readout (:meth:`SCRNet.set_readout`) of ``model`` on the labelled cells of
    ``datasets``.

    Args:
        model: a trained cluster network: an SCRNet, or a TransPose network (features from its
            ``encode``, so MLR fusion included; the readout goes to its SCRNet). Weights are not changed.
        datasets: the training SceneDataset, or a list of them (their caches are reused): the first
            pass reads their frames as they are, the ``passes - 1`` others with their augmentation
            ranges (one pass only when none of them augments).
        passes: passes over the frames (>= 1).
        dim: principal components of the head's features the readout reads.
        ridge: ridge weight (pseudo-observations per cluster pulling its map to zero).
        seed: seeds the augmentation draws and the cells sampled for the principal components.
        zoom: ``(min, max)`` zoom range of the augmented passes instead of the datasets' own (their
            other augmentation stays), e.g. :data:`TEST_ZOOM`.
        balance: give every dataset about the weight of the largest
            (:func:`~transpose.data.scene.section_repeats`): a smaller one's cells count ``r`` times
            in the plain pass and its frames are read ``r`` times, with fresh augmentation draws, in
            each augmented pass. Without it a few real frames beside many renders barely move the
            maps, yet real frames are what a sim-to-real network is tested on. Measured on the
            built-in scene's sim-to-real split (900 ``train_sim`` + 90 ``train_real`` frames;
            networks fine-tuned on both; 4 passes at 256 components; 300 ``test_real`` frames,
            test.py defaults): real frames counted 1 / 5 / 10 times (10: balanced) took the median
            error from 5.32 to 5.04 and 4.81 cm (relighting + per-cell NCE), and plain
            fine-tuning from 6.71 to 5.90 cm (5 times).

    Returns:
        ``{'passes', 'cells', 'clusters', 'rms_before', 'rms_after', 'seconds', 'zoom', 'repeats'}``: passes
        made, training cells used, clusters that had some, the (weighted) root-mean-square offset
        from the centres on those cells, without and with the readout (metres), the augmented
        passes' zoom range (None when they kept the datasets' own, or there were none), and each
        dataset's weight.
    """
    net = coordinate_network(model)
    if not net.num_clusters:
        raise ValueError("the readout needs a cluster network (train_init --clusters K)")
    if passes < 1 or dim < 1 or not ridge >= 0:
        raise ValueError(f"readout: passes and dim must be >= 1 and ridge >= 0, got {passes}, {dim}, {ridge}")
    datasets = list(datasets) if isinstance(datasets, (list, tuple)) else [datasets]
    if not any(d.augment for d in datasets):
        passes = 1  # trained without augmentation: further passes would repeat the first
    t0 = time.time()
    device = net.cluster_centers.device
    was_training = model.training
    model.eval()
    plain = [_with_augment(d, False) for d in datasets]
    augmented = [_with_augment(d, True, zoom) for d in datasets]
    centers = net.cluster_centers.float().cpu()
    g = torch.Generator().manual_seed(seed)
    try:
        # principal components from a sample of cells of (up to) 256 plain frames, evenly spread
        frames = [(d, i) for d in plain for i in range(len(d))]
        picks = torch.linspace(0, len(frames) - 1, min(len(frames), 256)).round().long().unique().tolist()
        per_frame = max(1, PCA_CELLS // len(picks))
        samples = []
        for j in _progress(picks, "readout: features", progress):
            d, i = frames[j]
            cells = _cells(model, d[i], device)
            if cells is not None:
                samples.append(cells[0][torch.randperm(len(cells[0]), generator=g)[:per_frame]])
        if not samples:
            raise ValueError(f"{datasets[0].section_dir}: no labelled cells to fit the readout on")
        mean, basis = pca_basis(torch.cat(samples), dim)
        system = ReadoutSystem(net.num_clusters, basis.shape[1])
        saved_rng = torch.random.get_rng_state()
        torch.manual_seed(seed)  # augmentation draws (sample_augmentation uses torch's RNG)
        repeats = section_repeats([len(d) for d in datasets]) if balance else [1] * len(datasets)
        try:
            for p in range(passes):
                # the plain pass weights a repeated dataset's cells; augmented passes re-draw them
                source = [(d, i, r if p == 0 else 1) for d, r in zip(plain if p == 0 else augmented, repeats)
                          for _ in range(1 if p == 0 else r) for i in range(len(d))]
                for d, i, weight in _progress(source, f"readout: pass {p + 1}/{passes}", progress):
                    cells = _cells(model, d[i], device)
                    if cells is None:
                        continue
                    x, target = cells
                    labels = nearest_cluster(target, centers)
                    system.add((x - mean) @ basis, target - centers[labels], labels, weight=weight)
        finally:
            torch.random.set_rng_state(saved_rng)
        weights, rms_before, rms_after = system.solve(ridge)
        net.set_readout(mean, basis, weights)
    finally:
        model.train(was_training)
    return {"passes": passes, "cells": int(system.count.sum()), "clusters": int((system.count > 0).sum()),
            "rms_before": rms_before, "rms_after": rms_after, "seconds": time.time() - t0,
            "zoom": None if zoom is None or passes == 1 else [float(zoom[0]), float(zoom[1])],
            "repeats": {d.section: r for d, r in zip(datasets, repeats)}}


def _with_augment(dataset, augment: bool, zoom: Optional[Tuple[float, float]] = None):
    """A shallow copy of a SceneDataset with augmentation on or off, and optionally another zoom
    range (the frame cache is shared)."""
    view = copy.copy(dataset)
    view.augment = augment
    if zoom is not None:
        view.aug = dataclasses.replace(view.aug, scale_min=float(zoom[0]), scale_max=float(zoom[1]))
    return view


def _progress(items: Iterable, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="frame", dynamic_ncols=True, mininterval=1.0, leave=False)


__all__ = ["fit_cluster_readout", "coordinate_network", "pca_basis", "ReadoutSystem", "DEFAULT_DIM", "DEFAULT_RIDGE",
           "TEST_ZOOM"]
