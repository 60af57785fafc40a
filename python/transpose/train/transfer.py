"""Sim-to-real training (TransPose): contrastive coordinate training (NCE), mid-level task regressors and
coordinate training on fused mid-level features (MLR), all on the shared loop of :mod:`.loop`.

- ``train_transfer(cfg)`` with ``cfg.task == 'coords'``: a coordinate network trained on one or
  more sections (e.g. ``train_sim,train_real``) with DSAC*'s initialisation loss (+ uncertainty
  NLL); with ``cfg.contrastive > 0`` every batch is a set of contrastive groups (anchor, in- and
  cross-domain positives, negatives; :mod:`transpose.data.pairs`) and ``contrastive * SupCon`` on
  the projection head's embeddings is added to the coordinate loss of every frame in the batch;
  ``cfg.dense_contrastive > 0`` adds the per-cell term (same batches): cells of different frames
  whose targets are within ``dense_radius`` are positives (:func:`~transpose.losses.cell_contrastive_loss`);
  with ``cfg.mlr`` the coordinate head decodes the encoder's features fused with frozen task
  encoders' (:class:`~transpose.models.heads.TransposeNet`).
- ``cfg.task in ('depth', 'normal')``: a :class:`~transpose.models.heads.TaskNet` trained on the
  same sections (targets: camera depth of the coordinate targets; camera-frame normals from
  ``normal/``), L1 / (1 - cos) plus a Laplace NLL for its uncertainty; checkpoint kind ``task``.

With several sections, each is drawn about as often as the largest (``cfg.balance_sections``,
``--section_weighting sections``: an epoch lists a small section's frames, or its contrastive
anchors, several times), so that 90 real frames beside 900 renders are seen as often as them.

Checkpoints of coordinate networks have kind ``scr``; with a head or MLR their options hold a
``transpose`` entry, and :func:`transpose.train.scr.load_network` rebuilds them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import ConcatDataset

from ..data.overlap import MiningConfig
from ..data.scene import section_repeats
from ..losses import cell_contrastive_loss, laplace_nll, supcon_loss
from ..models.heads import TASKS, TaskNet, TransposeNet, task_names
from .checkpoint import load_checkpoint
from .loop import LoopConfig, make_adam, pick_device, seed_everything, train_loop
from .scr import (KIND, InitConfig, _scheduler, build_dataset, build_network, coordinate_loss, load_network,
                  lr_schedule_for, output_size_for, parameter_groups, readout_after_training)

KIND_TASK = "task"
TASK_CHOICES = ("coords",) + tuple(TASKS)

__all__ = ["TransferConfig", "train_transfer", "load_network", "load_task_network", "config_from_args",
           "KIND_TASK", "TASK_CHOICES", "section_list"]


@dataclass
class TransferConfig(InitConfig):
    """``train_init`` settings plus TransPose's: sections, contrastive weight, task, MLR."""

    contrastive: float = 0.0        # weight of SupCon (0: off)
    temperature: float = 0.07
    head_dim: int = 128
    dense_contrastive: float = 0.0  # weight of the per-cell SupCon term (0: off)
    dense_radius: float = 0.05      # metres: cells of two frames closer than this see the same place
    dense_dim: int = 64
    dense_cells: int = 1024         # cells per batch in the per-cell term
    dense_cross_only: bool = False  # per-cell positives only across domains (sim cell <-> real cell)
    pos_same: int = 1               # per group: in-domain positives, cross-domain positives, negatives
    pos_cross: int = 1
    negatives: int = 2
    mining: MiningConfig = field(default_factory=MiningConfig)
    task: str = "coords"            # 'coords', 'depth' or 'normal'
    mlr: Tuple[str, ...] = ()       # task networks fused into the coordinate network
    mlr_nets: Tuple[str, ...] = ()  # their checkpoints (default: <network folder>/<task>.net)


def section_list(spec: str) -> List[str]:
    """``'train_sim,train_real'`` -> ``['train_sim', 'train_real']`` (ValueError naming --section when empty)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"--section: expected one or more distinct comma-separated sections, got '{spec}'")
    return names


def build_datasets(cfg: TransferConfig, sections: Sequence[str]) -> list:
    """One SceneDataset per section, all with the same output size."""
    from ..data import layout

    size = output_size_for(layout.resolve_scene(cfg.scene, cfg.root), sections[0], cfg.image_height)
    return [build_dataset(cfg, section, output_size=size, load_normals=cfg.task == "normal") for section in sections]


def load_task_network(path, device: Optional[str] = None) -> Tuple[TaskNet, dict]:
    """``(TaskNet in eval mode, options)`` from a ``--task depth|normal`` checkpoint."""
    ckpt = load_checkpoint(path, KIND_TASK)
    net = TaskNet.from_options(ckpt["options"])
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the task network its options describe ({exc})") from None
    return net.to(pick_device(device)).eval(), ckpt["options"]


def _task_targets(task: str, batch: Dict[str, Any], device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Targets of a task batch: depth ``(B, h, w)`` metres or camera-frame normals ``(B, 3, h, w)``, and
    the mask ``(B, h, w)`` of cells that have one."""
    pose = batch["pose"].to(device)
    R_w2c = pose[:, :3, :3].transpose(1, 2)
    if task == "depth":
        if "coords" not in batch:
            raise ValueError("--task depth needs coordinate targets (depth/ or init/)")
        coords = batch["coords"].to(device)
        mask = batch["mask"].to(device)
        centre = pose[:, :3, 3]
        z = torch.einsum("bk,bkhw->bhw", R_w2c[:, 2], coords - centre[:, :, None, None])
        return z, mask & (z > 1e-3)
    if "normals" not in batch:
        raise ValueError("--task normal needs normal/ maps in every training section")
    n_world = batch["normals"].to(device)
    n_cam = torch.einsum("bij,bjhw->bihw", R_w2c, n_world)
    return n_cam, n_world.norm(dim=1) > 0.5


def _section_weights(cfg: TransferConfig, datasets: Sequence) -> List[int]:
    """How many times each section's frames are drawn per epoch (all 1 with ``--section_weighting frames``)."""
    return section_repeats([len(d) for d in datasets]) if cfg.balance_sections else [1] * len(datasets)


def _frames(datasets: Sequence, repeats: Sequence[int]):
    """The frames of several sections as one dataset, a section repeated r times listed r times
    (an epoch then draws each of its frames r times, with fresh augmentation)."""
    repeated = [d for d, r in zip(datasets, repeats) for _ in range(r)]
    return repeated[0] if len(repeated) == 1 else ConcatDataset(repeated)


def _train_task(cfg: TransferConfig, datasets: list, device) -> Dict[str, Any]:
    repeats = _section_weights(cfg, datasets)
    dataset = _frames(datasets, repeats)
    net = TaskNet(cfg.task, width=cfg.network_width(), norm=cfg.norm).to(device)
    optimizer = make_adam(net.parameters(), lr=cfg.learningrate)
    scheduler = _scheduler(optimizer, cfg)

    def step(batch: Dict[str, Any], iteration: int) -> Dict[str, torch.Tensor]:
        pred, scale = net(batch["image"].to(device))
        target, mask = _task_targets(cfg.task, batch, device)
        if cfg.task == "depth":
            err = pred[:, 0] - target
            fit = err.abs()[mask].mean() if mask.any() else pred.sum() * 0
            err_metric = err.detach().abs()
        else:
            cos = (pred * target).sum(1).clamp(-1.0, 1.0)
            fit = (1.0 - cos)[mask].mean() if mask.any() else pred.sum() * 0
            err_metric = torch.acos(cos.detach().clamp(-1 + 1e-7, 1 - 1e-7))  # radians
        # the scale head sees detached features and errors: it calibrates without slowing the task
        nll = laplace_nll(err_metric, scale[:, 0], mask)
        loss = fit + cfg.nll_weight * nll
        median = err_metric[mask].median() if mask.any() else err_metric.new_zeros(())
        return {"loss": loss, "fit": fit.detach(), "nll": nll.detach(), "median_error": median}

    options = {**net.options(), "image_height": cfg.image_height,
               "trained_on": {"scene": str(datasets[0].scene_dir), "sections": [d.section for d in datasets],
                              "frames": int(sum(len(d) for d in datasets)),
                              "repeats": {d.section: r for d, r in zip(datasets, repeats)}},
               "train_init": _plain(cfg)}
    summary = train_loop(net, optimizer, dataset, step, _loop_config(cfg, KIND_TASK, options), scheduler)
    summary.update(frames=int(sum(len(d) for d in datasets)), network=net)
    return summary


def _plain(cfg: TransferConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in ("scene", "out")}


def _loop_config(cfg: TransferConfig, kind: str, options: dict, collate_fn=None) -> LoopConfig:
    # the same progress-driven learning-rate schedule as plain train_init
    return LoopConfig.from_settings(cfg, kind=kind, options=options, collate_fn=collate_fn,
                                    lr_schedule=lr_schedule_for(cfg))


def _mlr_paths(cfg: TransferConfig) -> List[Path]:
    if cfg.mlr_nets:
        if len(cfg.mlr_nets) != len(cfg.mlr):
            raise ValueError(f"--mlr_nets: need one checkpoint per --mlr task ({len(cfg.mlr)}), got {len(cfg.mlr_nets)}")
        return [Path(p) for p in cfg.mlr_nets]
    return [Path(cfg.out).parent / f"{task}.net" for task in cfg.mlr]


def train_transfer(cfg: TransferConfig) -> Dict[str, Any]:
    """Train a coordinate network (optionally NCE / MLR) or a task network; return the loop's summary."""
    if cfg.task not in TASK_CHOICES:
        raise ValueError(f"--task must be one of {', '.join(TASK_CHOICES)}, got '{cfg.task}'")
    if cfg.contrastive < 0:
        raise ValueError(f"--contrastive must be >= 0, got {cfg.contrastive}")
    if cfg.dense_contrastive < 0:
        raise ValueError(f"--dense_contrastive must be >= 0, got {cfg.dense_contrastive}")
    if not cfg.dense_radius > 0:
        raise ValueError(f"--dense_radius must be positive, got {cfg.dense_radius}")
    grouped = cfg.contrastive > 0 or cfg.dense_contrastive > 0  # batches of mined groups
    if cfg.task != "coords" and (grouped or cfg.mlr):
        raise ValueError(f"--task {cfg.task}: trains a task network; --contrastive, --dense_contrastive and --mlr "
                         f"apply to --task coords")
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    sections = section_list(cfg.section)
    datasets = build_datasets(cfg, sections)
    if cfg.task != "coords":
        return _train_task(cfg, datasets, device)
    if cfg.loss.mode != 0 and any(d.targets == "none" for d in datasets):
        bad = next(d for d in datasets if d.targets == "none")
        raise ValueError(f"{bad.section_dir}: mode {cfg.loss.mode} needs depth/ or init/ targets")

    tasks = {}
    for task, path in zip(cfg.mlr, _mlr_paths(cfg)):
        net_t, opts = load_task_network(path, "cpu")
        if opts["task"] != task:
            raise ValueError(f"{path}: is a '{opts['task']}' network, --mlr asked for '{task}'")
        tasks[task] = net_t
    net = TransposeNet(build_network(cfg, datasets), tasks, head_dim=cfg.head_dim if cfg.contrastive > 0 else 0,
                       dense_dim=cfg.dense_dim if cfg.dense_contrastive > 0 else 0).to(device)
    optimizer = make_adam(parameter_groups(net, cfg.learningrate))
    scheduler = _scheduler(optimizer, cfg)

    repeats = _section_weights(cfg, datasets)
    collate = None
    if grouped:
        from ..data.overlap import mine_scene
        from ..data.pairs import ContrastiveCollate, ContrastiveGroups

        mining = mine_scene(cfg.scene, sections, cfg.mining, cfg.root, progress=cfg.progress)
        dataset = ContrastiveGroups(datasets, mining, cfg.pos_same, cfg.pos_cross, cfg.negatives,
                                    anchor_repeats=repeats)
        collate = ContrastiveCollate(mining)
    else:
        dataset = _frames(datasets, repeats)

    def step(batch: Dict[str, Any], iteration: int) -> Dict[str, torch.Tensor]:
        image = batch["image"].to(device)
        features = net.encode(image)
        coords, sigma = net.decode(features)
        loss, metrics = coordinate_loss(net.scr, coords, sigma, batch, cfg, device)
        if cfg.contrastive > 0:
            nce = supcon_loss(net.embed(features), positive_mask=batch["positive_mask"].to(device),
                              temperature=cfg.temperature)
            loss = loss + cfg.contrastive * nce
            metrics["supcon"] = nce.detach()
        if cfg.dense_contrastive > 0:
            if "coords" not in batch:
                raise ValueError("--dense_contrastive needs scene-coordinate targets (depth/ or init/) in every section")
            dense = cell_contrastive_loss(net.embed_cells(features), batch["coords"].to(device),
                                          batch["mask"].to(device), cfg.dense_radius, max_cells=cfg.dense_cells,
                                          temperature=cfg.temperature,
                                          domains=batch["domain"] if cfg.dense_cross_only else None)
            loss = loss + cfg.dense_contrastive * dense
            metrics["supcon_cells"] = dense.detach()
        metrics["loss"] = loss.float()
        return metrics

    options = {**net.options(), "image_height": cfg.image_height, "mode": cfg.loss.mode, "sparse": cfg.sparse,
               "trained_on": {"scene": str(datasets[0].scene_dir), "section": ",".join(sections),
                              "frames": int(sum(len(d) for d in datasets)),
                              "repeats": dict(zip(sections, repeats))},
               "train_init": _plain(cfg)}
    summary = train_loop(net, optimizer, dataset, step, _loop_config(cfg, KIND, options, collate), scheduler)
    if cfg.readout:
        summary["readout"] = readout_after_training(cfg, net, datasets)
    summary.update(frames=int(sum(len(d) for d in datasets)), network=net)
    return summary


def config_from_args(args) -> TransferConfig:
    """A TransferConfig from train_init's parsed flags (the ``train_init`` ones plus TransPose's)."""
    from ..cli import _init_config_from_args

    base = _init_config_from_args(args)
    values = {f.name: getattr(base, f.name) for f in fields(base)}
    mlr = tuple(task_names(args.mlr)) if getattr(args, "mlr", None) else ()
    nets = tuple(p.strip() for p in args.mlr_nets.split(",") if p.strip()) if getattr(args, "mlr_nets", None) else ()
    return TransferConfig(**values, contrastive=getattr(args, "contrastive", 0.0) or 0.0,
                          dense_contrastive=getattr(args, "dense_contrastive", 0.0) or 0.0,
                          dense_radius=getattr(args, "dense_radius", 0.05),
                          dense_cross_only=getattr(args, "dense_cross_only", False),
                          temperature=getattr(args, "temperature", 0.07), task=getattr(args, "task", "coords"),
                          mlr=mlr, mlr_nets=nets)


def uses_transfer(args) -> bool:
    """Whether train_init's flags ask for anything beyond plain train_init (several sections, NCE, a task, MLR)."""
    return bool(getattr(args, "contrastive", 0) or getattr(args, "dense_contrastive", 0)
                or getattr(args, "task", "coords") != "coords"
                or getattr(args, "mlr", None) or "," in getattr(args, "section", ""))
