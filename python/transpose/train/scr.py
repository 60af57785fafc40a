"""Scene-coordinate regression: initialisation training (DSAC*'s train_init, with uncertainty)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ..losses import InitLossConfig, cluster_loss, kmeans, scr_init_loss, uncertainty_nll
from ..models.scr import SCRNet
from .loop import LoopConfig, make_adam, pick_device, seed_everything, train_loop
from .readout import DEFAULT_DIM as READOUT_DIM
from .readout import DEFAULT_RIDGE as READOUT_RIDGE

KIND = "scr"
#: Learning-rate factor of the sigma head: it sees detached features, so its steps move nothing
#: else, and at the trunk's rate it is still far from calibrated after a CPU demo's budget
#: (measured: NLL -5.6 -> -5.9 and Spearman(sigma, error) 0.56 -> 0.63 at 10x for the same steps).
SIGMA_LR_FACTOR = 10.0


@dataclass
class InitConfig:
    """Settings of ``train_init`` (flag names follow DSAC* where it has them)."""

    scene: str
    out: str
    section: str = "train"
    iterations: int = 100000
    learningrate: float = 5e-4
    schedule: str = "onecycle"      # 'onecycle' (short runs, as ACE), 'step' (DSAC*: halve every lrssteps), 'constant'
    lrssteps: int = 50000
    batch_size: int = 1
    loss: InitLossConfig = field(default_factory=InitLossConfig)
    sparse: bool = False            # targets from init/ (sparse SfM maps) instead of depth
    uncertainty: bool = False
    nll_weight: float = 1.0
    width: float = 1.0
    norm: str = "group"
    clusters: int = 0               # K > 0: cluster-classification head (see SCRNet), 0: regression (DSAC*)
    readout: int = 0                # passes of the closed-form offset readout after training (clusters; 0: off)
    readout_dim: int = READOUT_DIM  # principal components of the head's features the readout reads
    readout_ridge: float = READOUT_RIDGE  # its ridge weight
    balance_sections: bool = True   # several sections: each weighs about as much as the largest (training, readout)
    init: Optional[str] = None      # start from this coordinate checkpoint's weights (fine-tuning)
    tiny: bool = False              # DSAC*'s --tiny: width 0.5
    image_height: Optional[int] = None
    augment: bool = True
    aug_scale: Tuple[float, float] = (2.0 / 3.0, 3.0 / 2.0)  # zoom range (DSAC*)
    aug_rotation: float = 30.0      # in-plane rotation, +- degrees (DSAC*)
    aug_brightness: float = 0.1     # brightness factor 1 +- this (DSAC*)
    aug_contrast: float = 0.1       # contrast factor 1 +- this (DSAC*)
    aug_relight: float = 0.0        # random directional shading from normal maps (0: off)
    aug_shadow: float = 0.0         # probability of a random shadow polygon (0: off)
    aug_camera: float = 0.0         # random blur, vignetting, tone curve, noise (0: off)
    aug_view: float = 0.0           # novel views from depth: camera moved up to this x its depth (0: off)
    aug_view_prob: float = 0.5      # share of frames re-rendered so
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 10
    resume: bool = False
    max_minutes: Optional[float] = None
    num_workers: int = 0
    cache_mb: float = 2048.0        # decoded frames kept in memory (see SceneDataset)
    device: Optional[str] = None
    logdir: Optional[str] = None
    progress: bool = True
    root: str = "datasets"

    def network_width(self) -> float:
        return 0.5 if self.tiny else self.width


def output_size_for(scene_dir, section: str, image_height: Optional[int]) -> Tuple[int, int]:
    """``(H, W)`` every frame is brought to so that batches stack: the first frame's size after resizing."""
    from PIL import Image

    from ..data import layout

    images = layout.index_folder(layout.section_dir(scene_dir, section) / "rgb", layout.IMAGE_EXTS)
    if not images:
        raise ValueError(f"{layout.section_dir(scene_dir, section) / 'rgb'}: no images found")
    with Image.open(next(iter(images.values()))) as im:
        W, H = im.size
    if image_height is None:
        return H, W
    return int(image_height), max(1, int(round(W * image_height / H)))


def build_dataset(cfg: InitConfig, section: Optional[str] = None, output_size: Optional[Tuple[int, int]] = None,
                  load_normals: bool = False):
    """The SceneDataset of ``section`` (default ``cfg.section``) for coordinate training.

    Depth gives exact targets at every augmented cell centre; init/ maps can only be looked up at
    the nearest original cell (up to half a cell off), so depth wins when both exist. Batches of
    more than one image need one fixed image size (augmentation zooms change it otherwise).
    """
    from ..data import layout
    from ..data.augment import AugmentParams
    from ..data.scene import SceneDataset, coordinate_targets

    section = section or cfg.section
    scene_dir = layout.resolve_scene(cfg.scene, cfg.root)
    targets = coordinate_targets(scene_dir, section, cfg.sparse)
    if output_size is None and cfg.batch_size > 1:
        output_size = output_size_for(scene_dir, section, cfg.image_height)
    aug = AugmentParams(scale_min=cfg.aug_scale[0], scale_max=cfg.aug_scale[1], rotation_deg=cfg.aug_rotation,
                        brightness=cfg.aug_brightness, contrast=cfg.aug_contrast, relight=cfg.aug_relight,
                        shadow=cfg.aug_shadow, camera=cfg.aug_camera, view_shift=cfg.aug_view,
                        view_prob=cfg.aug_view_prob)
    return SceneDataset(scene_dir, section, mode="scr", augment=cfg.augment, aug=aug, image_height=cfg.image_height,
                        output_size=output_size, targets=targets, root=cfg.root, load_depth=False,
                        load_normals=load_normals, cache_mb=cfg.cache_mb)


def one_cycle(progress: float, warmup: float = 0.05, start: float = 0.04, end: float = 1e-3) -> float:
    """Learning-rate factor of a one-cycle schedule (as ACE): linear warm-up from ``start`` to 1 over
    the first ``warmup`` of training, then cosine annealing to ``end``."""
    if progress < warmup:
        return start + (1.0 - start) * progress / warmup
    t = (progress - warmup) / (1.0 - warmup)
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def lr_schedule_for(cfg: InitConfig):
    """The loop's progress-driven learning-rate factor for ``cfg.schedule`` (None: a torch scheduler or constant)."""
    return one_cycle if cfg.schedule == "onecycle" else None


def _scheduler(optimizer: torch.optim.Optimizer, cfg: InitConfig):
    """A torch scheduler for 'step'; None for 'onecycle' (applied by the loop from progress) and 'constant'."""
    if cfg.schedule == "onecycle":
        return None
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lrssteps, gamma=0.5)
    if cfg.schedule == "constant":
        return None
    raise ValueError(f"--schedule must be onecycle, step or constant, got '{cfg.schedule}'")


def coordinate_loss(net: SCRNet, coords: torch.Tensor, sigma: Optional[torch.Tensor], batch: Dict[str, Any],
                    cfg: InitConfig, device) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Training loss of a coordinate network's last forward pass ``coords (B, 3, h, w)``, ``sigma (B, 1, h, w)``.

    DSAC*'s initialisation loss (regression) or the cluster head's cross-entropy + offset loss (a
    network with clusters), plus the uncertainty NLL on labelled cells (a network with uncertainty).
    Shared by ``train_init`` and the sim-to-real trainer. Returns ``(loss, metrics)``.
    """
    pose = batch["pose"].to(device).double()
    K = batch["K"].to(device).double()
    target = batch["coords"].to(device) if "coords" in batch else None
    mask = batch["mask"].to(device) if "mask" in batch else None
    if net.num_clusters:
        logits, offsets = net.cluster_outputs()
        loss, stats = cluster_loss(logits, offsets, net.cluster_centers, target, mask)
        metrics = {"loss_coords": loss.detach(), "cluster_accuracy": stats["accuracy"]}
        if mask.any():
            metrics["coord_error"] = (coords.detach() - target).norm(dim=1)[mask].median()
    else:
        loss, stats = scr_init_loss(coords.double(), pose, K, None if target is None else target.double(), mask,
                                    cfg.loss)
        metrics = {"loss_coords": loss.detach(), "valid": stats["valid"]}
        if "coord_error" in stats:
            metrics["coord_error"] = stats["coord_error"]
    if net.uncertainty and mask is not None:
        # coords are detached (and the sigma head sees detached features): sigma learns to
        # predict the coordinates' error without the 1/sigma^2 weighting slowing their regression
        nll = uncertainty_nll(coords.detach(), sigma, target, mask)
        loss = loss + cfg.nll_weight * nll
        metrics["nll"] = nll.detach()
    return loss, metrics


def build_network(cfg: InitConfig, datasets: list) -> SCRNet:
    """The SCRNet ``cfg`` trains: with ``cfg.init`` the network of that checkpoint (its width, head and
    scene centre), else a fresh one whose scene centre is the mean training camera position (DSAC*)
    and, with ``cfg.clusters``, whose cluster centres are the k-means centres of the training targets."""
    clusters = cfg.clusters
    if cfg.init:
        net = _initial_network(cfg.init)
        clusters = net.num_clusters
    if cfg.readout and not clusters:
        raise ValueError("--readout needs a cluster network (--clusters K)" +
                         (f"; {cfg.init} has a regression head" if cfg.init else ""))
    if clusters and (cfg.loss.mode == 0 or any(d.targets == "none" for d in datasets)):
        raise ValueError("--clusters needs coordinate targets (depth or init/); it does not work with --mode 0")
    if cfg.init:
        # an older cluster network with uncertainty (saved before sigma_confidence) gains the term at
        # zero: the same outputs at the start, and the NLL learns it as for a new network
        net.add_sigma_confidence()
        # a readout was fitted to the features training is about to change (--readout fits a new one)
        net.clear_readout()
        return net
    poses = torch.cat([torch.as_tensor(d.poses) for d in datasets])
    net = SCRNet(scene_center=poses[:, :3, 3].mean(dim=0), width=cfg.network_width(), uncertainty=cfg.uncertainty,
                 norm=cfg.norm, num_clusters=clusters)
    if clusters:
        net.cluster_centers.copy_(_scene_clusters(cfg, datasets))
    return net


def parameter_groups(net: torch.nn.Module, lr: float) -> list:
    """Adam parameter groups of a coordinate network: everything trainable at ``lr``, the sigma head
    (``sigma_head`` / ``sigma_confidence`` modules, also inside a TransposeNet) at ``SIGMA_LR_FACTOR * lr``."""
    def is_sigma(name: str) -> bool:
        return any(part in ("sigma_head", "sigma_confidence") for part in name.split("."))

    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if not is_sigma(n)], "lr": lr},
              {"params": [p for n, p in named if is_sigma(n)], "lr": lr * SIGMA_LR_FACTOR}]
    return [g for g in groups if g["params"]]


def _initial_network(path) -> SCRNet:
    """The coordinate network (SCRNet part) of a checkpoint, for ``--init``: a plain train_init /
    train_e2e network, or the SCRNet inside a TransPose network (its heads and task encoders are not taken)."""
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, KIND)
    net = SCRNet.from_options(ckpt["options"])
    state = ckpt["model"]
    if ckpt["options"].get("transpose"):
        state = {k[len("scr."):]: v for k, v in state.items() if k.startswith("scr.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"--init {path}: weights do not match the network its options describe ({exc})") from None
    return net


def train_init(cfg: InitConfig) -> Dict[str, Any]:
    """Train a coordinate network (from scratch, or from ``cfg.init``); return the loop's summary
    plus the dataset size."""
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    dataset = build_dataset(cfg)
    if cfg.loss.mode != 0 and dataset.targets == "none":
        raise ValueError(f"{dataset.section_dir}: mode {cfg.loss.mode} needs depth/ or init/ targets; "
                         f"use --mode 0 for RGB-only training")
    net = build_network(cfg, [dataset]).to(device)
    optimizer = make_adam(parameter_groups(net, cfg.learningrate))
    scheduler = _scheduler(optimizer, cfg)

    def step(batch: Dict[str, Any], iteration: int) -> Dict[str, torch.Tensor]:
        image = batch["image"].to(device)
        coords, sigma = net(image)
        loss, metrics = coordinate_loss(net, coords, sigma, batch, cfg, device)
        metrics["loss"] = loss.float()
        return metrics

    options = {**net.options(), "image_height": cfg.image_height, "mode": cfg.loss.mode, "sparse": cfg.sparse,
               "trained_on": {"scene": str(dataset.scene_dir), "section": cfg.section, "frames": len(dataset)},
               "train_init": {k: v for k, v in asdict(cfg).items() if k not in ("scene", "out")}}
    loop_cfg = LoopConfig.from_settings(cfg, kind=KIND, options=options, lr_schedule=lr_schedule_for(cfg))
    summary = train_loop(net, optimizer, dataset, step, loop_cfg, scheduler)
    if cfg.readout:
        summary["readout"] = readout_after_training(cfg, net, [dataset])
    summary["frames"] = len(dataset)
    summary["network"] = net
    return summary


def readout_after_training(cfg: InitConfig, net, datasets: list) -> Optional[Dict[str, Any]]:
    """Fit and store the readout (:func:`add_readout`) of a trainer's network once its loop is done.
    Every rank holds the same weights then: the main process fits and writes, the others wait (and
    get None)."""
    from . import distributed

    stats = None
    if distributed.is_main_process():
        stats = add_readout(cfg.out, net, datasets, cfg.readout, cfg.readout_dim, cfg.readout_ridge, cfg.seed,
                            cfg.progress, balance=cfg.balance_sections)
    distributed.barrier()
    return stats


def add_readout(path, net, datasets, passes: int, dim: int, ridge: float, seed: int = 0,
                progress: bool = True, balance: bool = True) -> Dict[str, Any]:
    """Fit the closed-form offset readout of ``net`` (an SCRNet or a TransPose network) on ``datasets``
    (:func:`~transpose.train.readout.fit_cluster_readout`) and store it in the checkpoint at ``path``
    (atomically; its training state is kept, so ``--resume`` still works). Returns the fit's statistics."""
    from .. import io
    from .checkpoint import load_checkpoint
    from .readout import TEST_ZOOM, fit_cluster_readout

    # augmented passes zoom as test.py will (TEST_ZOOM), with the training's other augmentation
    stats = fit_cluster_readout(net, datasets, passes=passes, dim=dim, ridge=ridge, seed=seed, progress=progress,
                                zoom=TEST_ZOOM, balance=balance)
    print(f"readout: {stats['cells']} cells, {stats['clusters']} clusters, offset RMS {100 * stats['rms_before']:.1f} "
          f"-> {100 * stats['rms_after']:.1f} cm on the training cells ({stats['seconds']:.0f} s)")
    ckpt = load_checkpoint(path, KIND)
    ckpt["model"] = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    ckpt["options"] = {**ckpt["options"], **net.options(),
                       "readout": {"dim": dim, "ridge": ridge, **stats}}
    io.save_torch(path, ckpt)
    return stats


#: The training settings an existing checkpoint's readout passes reuse (augmentation, targets).
_READOUT_SETTINGS = ("augment", "aug_scale", "aug_rotation", "aug_brightness", "aug_contrast", "aug_relight",
                     "aug_shadow", "aug_camera", "aug_view", "aug_view_prob", "sparse")


def readout_checkpoint(network, scene, sections: Optional[str] = None, out=None, passes: int = 4,
                       dim: int = READOUT_DIM, ridge: float = READOUT_RIDGE, seed: int = 0, root: str = "datasets",
                       progress: bool = True, balance: bool = True) -> Dict[str, Any]:
    """Fit the readout of an already trained cluster checkpoint ``network`` (train_init, e2e or
    TransPose) on ``sections`` (comma-separated; default: those it was trained on) of ``scene``,
    with the image size and augmentation it was trained with, and write it to ``out`` (default:
    ``network`` itself; atomically either way); ``balance`` as in
    :func:`~transpose.train.readout.fit_cluster_readout`. Returns the fit's statistics."""
    from .. import io
    from .checkpoint import load_checkpoint
    from .readout import coordinate_network

    net, options = load_network(network)
    if not coordinate_network(net).num_clusters:
        raise ValueError(f"{network}: has a regression head; the readout needs a cluster network (--clusters K)")
    trained = options.get("train_init") or {}
    names = [s.strip() for s in (sections or options.get("trained_on", {}).get("section") or "train").split(",")]
    cfg = InitConfig(scene=str(scene), out=str(out or network), image_height=options.get("image_height"), root=root,
                     **{k: (tuple(trained[k]) if k == "aug_scale" else trained[k])
                        for k in _READOUT_SETTINGS if k in trained})
    datasets = [build_dataset(cfg, name) for name in names if name]
    if out is not None and Path(out).resolve() != Path(network).resolve():
        io.save_torch(out, load_checkpoint(network, KIND))
    return add_readout(cfg.out, net, datasets, passes, dim, ridge, seed, progress, balance)


def _scene_clusters(cfg: InitConfig, datasets: list, per_frame: int = 256) -> torch.Tensor:
    """k-means centres ``(K, 3)`` of the training targets (a seeded subsample of labelled cells per frame).

    Reads ``init/`` maps directly where a section has them (milliseconds a frame); otherwise takes
    the targets of un-augmented dataset items (decoding images and depth: seconds for a scene).
    """
    from ..data import layout
    from ..data.scene import SceneDataset, labelled_cells

    g = torch.Generator().manual_seed(cfg.seed)
    points = []
    for dataset in datasets:
        if all(p is not None for p in dataset.init_paths):
            frames = (torch.from_numpy(np.ascontiguousarray(m[:, labelled_cells(m)].T)) for m in
                      (np.nan_to_num(layout.read_coords(p)) for p in dataset.init_paths))
        else:
            plain = SceneDataset(dataset.scene_dir, dataset.section, mode="scr", targets=dataset.targets,
                                 image_height=cfg.image_height, load_depth=False, load_normals=False)
            frames = (item["coords"].permute(1, 2, 0)[item["mask"]] for item in (plain[i] for i in range(len(plain))))
        for cells in frames:
            points.append(cells[torch.randperm(cells.shape[0], generator=g)[:per_frame]].float())
    return kmeans(torch.cat(points), cfg.clusters, seed=cfg.seed)


def load_network(path, device: Optional[str] = None) -> tuple:
    """``(network in eval mode, checkpoint options)`` of any coordinate checkpoint (train_init,
    train_e2e, or TransPose's NCE / MLR networks, whose options say ``transpose``)."""
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, KIND)
    options = ckpt["options"]
    if options.get("transpose"):
        from ..models.heads import TransposeNet

        net = TransposeNet.from_options(options)
    else:
        net = SCRNet.from_options(options)
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the network its options describe ({exc})") from None
    net.to(pick_device(device)).eval()
    return net, options


__all__ = ["InitConfig", "train_init", "load_network", "parameter_groups"]
