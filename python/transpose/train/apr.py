"""Absolute pose regression (APR): training on the shared loop, evaluation and batch evaluation.

Data comes from either source, converted to one :class:`~transpose.data.poselists.PoseList` and
served by :class:`~transpose.data.apr.AprDataset` (resize, crop, colour jitter, ImageNet
normalisation), so both sources see the same transforms:

- pose lists: the multi-scene CSV (``scene,split,seq,img_path,t1..q4``) or a Cambridge
  ``dataset_*.txt``, with image paths relative to an image folder;
- scene folders of the SCR branch (``<scene>/<section>/{rgb,poses}``): the same frames serve both
  branches; several folders make a multi-scene set (scene ids in the order given).

Hyperparameters come from a JSON config with the originals' layout (``7Scenes_config.json``,
``CambridgeLandmarks_config.json`` ship in :mod:`transpose.models.apr`; a path to the user's own
file works too), with ``--set key=value`` overrides. Epoch-based settings of the originals
(``n_epochs``, ``lr_scheduler_step_size``, ``n_freq_checkpoint``) are converted to iterations of
the shared loop: one epoch = ``len(training set) // batch_size`` iterations.

The checkpoint (kind ``"apr"``) holds the network and the learned loss weights (``s_x``,
``s_q``) under ``network.*`` / ``criterion.*``, and options that rebuild the network alone
(:func:`load_apr_network`).
"""
from __future__ import annotations

import csv
import io as _stdio
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import geometry, io
from ..data.apr import AprDataset
from ..data.poselists import PoseList, read_pose_list
from ..evaluate import format_metrics, pose_metrics, spearman_correlation
from ..losses import apr_loss, apr_pose_errors, apr_pose_matrix, build_pose_criterion
from ..models.apr import APR_CONFIG_DIR, APR_MODELS, build_apr_model, load_apr_config
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .loop import LoopConfig, make_adam, pick_device, seed_everything, train_loop

KIND = "apr"
MULTI_SCENE_MODELS = ("ms-transformer", "ms-hyperpose")
#: the originals resize the shorter side to 256 and crop 224; smaller inputs keep that ratio
RESIZE_RATIO = 256.0 / 224.0

__all__ = ["KIND", "AprTrainConfig", "AprData", "resolve_config", "model_config", "load_frames",
           "EqualizedScenes", "AprTrainingModule", "train_apr", "load_apr_network", "evaluate_apr",
           "write_apr_results", "format_apr_metrics", "find_checkpoints", "batch_evaluate", "parse_overrides",
           "snapshot_path", "set_cpu_threads", "CachedAprDataset"]


# --------------------------------------------------------------------------- configuration


def set_cpu_threads(threads: Optional[int]) -> None:
    """Set torch's intra-op CPU threads (None: leave them). On a busy machine one thread per
    process is often several times faster than more: small layers spin-wait for their peers."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(int(threads))


def resolve_config(name: str) -> str:
    """Path of a config: a file (the user's own JSON), a shipped file name (``7Scenes_config.json``)
    or a shipped config name (``7Scenes``). ValueError naming ``--config`` otherwise."""
    if os.path.isfile(name):
        return name
    shipped = os.path.join(APR_CONFIG_DIR, os.path.basename(name))
    if name == os.path.basename(name) and name.endswith(".json") and os.path.isfile(shipped):
        return shipped
    candidate = os.path.join(APR_CONFIG_DIR, f"{name}_config.json")
    if os.path.isfile(candidate):
        return candidate
    names = sorted(f for f in os.listdir(APR_CONFIG_DIR) if f.endswith("_config.json"))
    raise ValueError(f"--config {name}: no such file, and not a shipped config ({', '.join(names)})")


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``["key=value", ...]`` -> dict; values are JSON (``8``, ``0.5``, ``true``, ``"resnet34"``,
    ``{"width_mult": 0.25}``) or else plain strings."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected key=value")
        try:
            out[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[key.strip()] = text
    return out


def model_config(config: str, model: str, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The ``model`` section of ``config`` (``general`` underneath) with ``overrides`` on top."""
    if model not in APR_MODELS:
        raise ValueError(f"--model must be one of {list(APR_MODELS)}, got {model!r}")
    merged = {**load_apr_config(resolve_config(config), model), **(overrides or {})}
    merged["model"] = model
    return merged


# --------------------------------------------------------------------------- data


@dataclass
class AprData:
    """A pose list and the folder its image paths are relative to."""

    poses: PoseList
    image_root: str
    description: str


def _scene_folder_list(scenes: Sequence[str], section: str, root: str,
                       scene_names: Optional[Sequence[str]] = None) -> AprData:
    """Frames of ``section`` of each scene folder as one pose list (absolute image paths).

    Scene ids follow the order of ``scenes``; with ``scene_names`` (the training scenes of a
    checkpoint) a folder whose name is one of them gets that id, and a single-scene model takes
    any folder as its scene 0.
    """
    from ..data.scene import SceneDataset

    paths: List[str] = []
    poses: List[np.ndarray] = []
    ids: List[int] = []
    names: List[str] = []
    section_dirs: List[str] = []
    for i, scene in enumerate(scenes):
        ds = SceneDataset(scene, section, mode="apr", targets="none", root=root, load_depth=False, load_normals=False)
        name = ds.scene_dir.name
        if scene_names is None:
            names.append(name if name not in names else f"{name}_{i}")
            sid = i
        elif name in scene_names:
            sid = list(scene_names).index(name)
        elif len(scene_names) == 1:
            sid = 0
        else:
            raise ValueError(f"--scene {scene}: '{name}' is none of the scenes the network was trained on "
                             f"({', '.join(scene_names)})")
        paths += [str(Path(p).resolve()) for p in ds.image_paths]
        poses.append(np.asarray(ds.poses, dtype=np.float64))
        ids += [sid] * len(ds)
        section_dirs.append(str(ds.section_dir.resolve()))
    # image paths relative to the folder the sections share (one section: "rgb/<frame>.png")
    image_root = os.path.commonpath(section_dirs)
    paths = [os.path.relpath(p, image_root) for p in paths]
    all_poses = np.concatenate(poses)
    for k, T in enumerate(all_poses):
        geometry.check_rigid(T, f"{paths[k]} (pose)")
    listed = PoseList(paths, all_poses, np.asarray(ids, dtype=np.int64),
                      list(scene_names) if scene_names is not None else names, source=",".join(map(str, scenes)))
    return AprData(listed, image_root, f"{', '.join(map(str, scenes))} / {section}")


def load_frames(scenes: Sequence[str] = (), section: str = "train", poselist: Optional[str] = None,
                images: Optional[str] = None, root: str = "datasets", quaternion_frame: str = "auto",
                scene_names: Optional[Sequence[str]] = None) -> AprData:
    """Frames from scene folders (``scenes`` + ``section``) or a pose list (``poselist`` + ``images``)."""
    if bool(scenes) == bool(poselist):
        raise ValueError("give either --scene (scene folders) or --poselist (a pose list file), not both or neither")
    if scenes:
        return _scene_folder_list(scenes, section, root, scene_names)
    if not os.path.isfile(poselist):
        raise ValueError(f"--poselist {poselist}: file not found")
    image_root = images or os.path.dirname(os.path.abspath(poselist))
    if not os.path.isdir(image_root):
        raise ValueError(f"--images {image_root}: not a folder")
    kwargs: Dict[str, Any] = {}
    if scene_names is not None:
        kwargs["scene_names"] = list(scene_names)
    with open(poselist) as fh:
        is_csv = fh.readline().strip().startswith("scene,")
    if is_csv and quaternion_frame != "auto":
        kwargs["quaternion_frame"] = quaternion_frame
    if not is_csv and scene_names is not None and len(scene_names) == 1:
        kwargs["scene"] = scene_names[0]  # a Cambridge list of the (single) training scene
    listed = read_pose_list(poselist, **kwargs)
    return AprData(listed, image_root, str(poselist))


class EqualizedScenes(Dataset):
    """Every scene equally often: index ``i`` is scene ``i % S``, its ``(i // S)``-th frame in a fixed
    seeded order (wrapping around for the smaller scenes). ``len = S x largest scene``.

    Deterministic in the index, so the shared loop's per-epoch permutation and ``--resume`` work
    unchanged (the original repositories padded each epoch with repeats of the smaller scenes).
    """

    def __init__(self, dataset: Dataset, scene_ids: np.ndarray, seed: int = 0) -> None:
        scene_ids = np.asarray(scene_ids, dtype=np.int64)
        rng = np.random.default_rng(seed)
        self.dataset = dataset
        self.groups = [rng.permutation(np.flatnonzero(scene_ids == s)) for s in np.unique(scene_ids)]
        self.length = len(self.groups) * max(len(g) for g in self.groups)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        group = self.groups[index % len(self.groups)]
        return self.dataset[int(group[(index // len(self.groups)) % len(group)])]


#: training sets up to this many frames keep their resized images in memory (about 1 GB at 256 px)
CACHE_MAX_FRAMES = 4000


class CachedAprDataset(AprDataset):
    """:class:`AprDataset` that decodes and resizes each image once (same items: the resize is
    deterministic, random crops and jitter still apply per draw). Full-size PNG decoding and
    resizing otherwise cost more CPU per iteration than a small network's training step."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._cache: Dict[int, Any] = {}

    def load_image(self, index: int):
        from ..data.apr import resize_shorter

        if index not in self._cache:
            self._cache[index] = resize_shorter(super().load_image(index), self.resize)
        return self._cache[index].copy()


def _input_sizes(input_size: int) -> Tuple[int, int]:
    """``(resize of the shorter side, crop size)`` for a crop of ``input_size`` px."""
    if input_size < 32:
        raise ValueError(f"--input_size must be at least 32 px, got {input_size}")
    return int(round(input_size * RESIZE_RATIO)), int(input_size)


def _collate(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in ("image", "pose", "position", "quaternion")}
    out["scene"] = torch.tensor([it["scene"] for it in items], dtype=torch.long)
    out["name"] = [it["name"] for it in items]
    return out


# --------------------------------------------------------------------------- training


@dataclass
class AprTrainConfig:
    """Settings of ``transpose apr train``; ``None`` means: take it from the JSON config."""

    out: str
    model: str = "posenet"
    config: str = "7Scenes_config.json"
    overrides: Dict[str, Any] = field(default_factory=dict)
    scenes: List[str] = field(default_factory=list)
    section: str = "train"
    poselist: Optional[str] = None
    images: Optional[str] = None
    quaternion_frame: str = "auto"
    root: str = "datasets"
    input_size: int = 224
    iterations: Optional[int] = None
    batch_size: Optional[int] = None
    learningrate: Optional[float] = None
    equalize: Optional[bool] = None
    augment: Optional[bool] = None
    snapshot_every: Optional[int] = None    # iterations; 0 = no snapshots
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 10
    resume: bool = False
    max_minutes: Optional[float] = None
    num_workers: int = 0
    device: Optional[str] = None
    logdir: Optional[str] = None
    progress: bool = True
    threads: Optional[int] = None           # torch intra-op CPU threads (None: torch's default)


class AprTrainingModule(nn.Module):
    """What the loop trains and checkpoints: the network and the pose loss (learned ``s_x``, ``s_q``)."""

    def __init__(self, network: nn.Module, criterion: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.criterion = criterion


def snapshot_path(out: os.PathLike, iteration: int) -> Path:
    """``<out without suffix>_snapshots/<name>_iter<iteration>.pt``: the periodic copies batch-eval reads."""
    out = Path(out)
    return Path(str(out.with_suffix("")) + "_snapshots") / f"{out.stem}_iter{iteration:07d}.pt"


def train_apr(cfg: AprTrainConfig) -> Dict[str, Any]:
    """Train an APR network on the shared loop; return the loop's summary plus data facts."""
    seed_everything(cfg.seed)
    set_cpu_threads(cfg.threads)
    device = pick_device(cfg.device)
    config = model_config(cfg.config, cfg.model, cfg.overrides)
    data = load_frames(cfg.scenes, cfg.section, cfg.poselist, cfg.images, cfg.root, cfg.quaternion_frame)
    multi_scene = cfg.model in MULTI_SCENE_MODELS
    num_scenes = len(data.poses.scene_names)
    if multi_scene:
        config["num_scenes"] = num_scenes  # the data decides; the config's count is the original benchmark's
    elif num_scenes > 1:
        print(f"note: {cfg.model} is a single-scene model; training it on {num_scenes} scenes as one")
    resize, crop_size = _input_sizes(cfg.input_size)
    augment = cfg.augment if cfg.augment is not None else not config.get("no_augment", False)
    dataset_class = CachedAprDataset if len(data.poses) <= CACHE_MAX_FRAMES else AprDataset
    dataset: Dataset = dataset_class(data.image_root, data.poses, train=True, resize=resize, crop_size=crop_size,
                                     jitter=augment)
    equalize = cfg.equalize if cfg.equalize is not None else bool(config.get("equalize_scenes", False))
    if equalize and num_scenes > 1:
        dataset = EqualizedScenes(dataset, data.poses.scene_ids, cfg.seed)
    batch_size = int(cfg.batch_size or config.get("batch_size", 8))
    if batch_size > len(dataset):
        raise ValueError(f"--batch_size {batch_size} exceeds the {len(dataset)} training frames")
    per_epoch = max(1, len(dataset) // batch_size)
    iterations = int(cfg.iterations or config.get("n_epochs", 100) * per_epoch)
    lr = float(cfg.learningrate or config.get("lr", 1e-4))

    network = build_apr_model(config)
    criterion = build_pose_criterion(config)
    module = AprTrainingModule(network, criterion).to(device)
    optimizer = make_adam([p for p in module.parameters() if p.requires_grad], lr=lr,
                                 weight_decay=float(config.get("weight_decay", 0.0)),
                                 eps=float(config.get("eps", 1e-8)))
    step_epochs = config.get("lr_scheduler_step_size")
    scheduler = None
    if step_epochs:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(step_epochs) * per_epoch,
                                                    gamma=float(config.get("lr_scheduler_gamma", 0.1)))
    snapshot_every = cfg.snapshot_every
    if snapshot_every is None:
        snapshot_every = int(config.get("n_freq_checkpoint", 0)) * per_epoch
    options = {"model": cfg.model, "config": config, "scene_names": list(data.poses.scene_names),
               "multi_scene": multi_scene, "resize": resize, "crop_size": crop_size,
               "trained_on": {"data": data.description, "frames": len(data.poses),
                              "scene_counts": data.poses.scene_counts()},
               "train_apr": {k: v for k, v in asdict(cfg).items() if k != "out"}}

    def step(batch: Dict[str, Any], iteration: int) -> Dict[str, torch.Tensor]:
        if snapshot_every and iteration % snapshot_every == 0:
            # the weights after `iteration` updates, before this batch's update
            save_checkpoint(snapshot_path(cfg.out, iteration), kind=KIND, model=module, options=options,
                            iteration=iteration)
        image = batch["image"].to(device)
        position = batch["position"].to(device)
        quaternion = batch["quaternion"].to(device)
        scene = batch["scene"].to(device)
        outputs = network(image, scene) if multi_scene else network(image)
        loss, parts = apr_loss(outputs, position, quaternion, criterion, gt_scene=scene if multi_scene else None)
        with torch.no_grad():
            trans_err, rot_err = apr_pose_errors(outputs["position"], outputs["quaternion"], position, quaternion)
        metrics: Dict[str, Any] = {"loss": loss, "loss_pose": parts["pose"],
                                   "trans_err_m": trans_err.median(), "rot_err_deg": rot_err.median()}
        if "scene" in parts:
            metrics["loss_scene"] = parts["scene"]
        if hasattr(criterion, "s_x"):
            metrics["s_x"], metrics["s_q"] = criterion.s_x.detach(), criterion.s_q.detach()
        return metrics

    loop_cfg = LoopConfig.from_settings(cfg, kind=KIND, options=options, iterations=iterations,
                                        batch_size=batch_size, collate_fn=_collate)
    summary = train_loop(module, optimizer, dataset, step, loop_cfg, scheduler)
    summary.update(frames=len(data.poses), scenes=num_scenes, iterations_total=iterations, batch_size=batch_size,
                   per_epoch=per_epoch, network=network)
    return summary


# --------------------------------------------------------------------------- evaluation


def load_apr_network(path: os.PathLike, device: Optional[str] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """``(network in eval mode, checkpoint options)`` of an ``apr`` checkpoint; CheckpointError naming
    the file when its options or weights do not describe a network."""
    ckpt = load_checkpoint(path, KIND)
    options = ckpt.get("options") or {}
    if not isinstance(options.get("config"), dict) or "crop_size" not in options:
        raise CheckpointError(f"{path}: 'apr' checkpoint lacks the options that rebuild its network")
    try:
        network = build_apr_model(options["config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the network from its options ({exc})") from None
    state = {k[len("network."):]: v for k, v in ckpt["model"].items() if k.startswith("network.")}
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: weights do not match the network its options describe "
                              f"({first[1].strip() if len(first) > 1 else first[0]})") from None
    network.to(pick_device(device)).eval()
    options = dict(options, iteration=int(ckpt.get("iteration", 0)))
    return network, options


@torch.no_grad()
def evaluate_apr(network: nn.Module, options: Dict[str, Any], data: AprData, device: Optional[str] = None,
                 batch_size: int = 8, mc_samples: int = 0, max_frames: Optional[int] = None,
                 seed: int = 0) -> Dict[str, Any]:
    """Predict every frame of ``data``; ``{"summary": metrics, "frames": [per-frame dicts]}``.

    Errors use :func:`transpose.geometry.pose_errors` (geodesic angle with clamped acos, distance
    of camera centres) and :func:`transpose.evaluate.pose_metrics`. ``mc_samples >= 2``: Bayesian
    PoseNet (Monte Carlo dropout): the mean pose, per-frame ``position_std_m`` (root of the trace
    of the position covariance) and ``rotation_std_deg``, and their Spearman correlation with the
    errors in the summary.
    """
    from ..models.posenet import mc_dropout_predict

    dev = pick_device(device)
    poses = data.poses if max_frames is None else data.poses.subset(np.arange(len(data.poses)) < max_frames)
    dataset = AprDataset(data.image_root, poses, train=False, resize=int(options["resize"]),
                         crop_size=int(options["crop_size"]))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate)
    network.eval()
    if mc_samples:
        torch.manual_seed(seed)  # dropout masks: reproducible runs
    frames: List[Dict[str, Any]] = []
    for batch in loader:
        image = batch["image"].to(dev)
        t0 = time.perf_counter()
        if mc_samples:
            out = mc_dropout_predict(network, image, mc_samples)
        else:
            out = network(image)
        ms = 1000.0 * (time.perf_counter() - t0) / image.shape[0]
        T_est = apr_pose_matrix(out["position"].double().cpu(), out["quaternion"].double().cpu()).numpy()
        T_gt = batch["pose"].double().numpy()
        rot_err, trans_err = geometry.pose_errors(T_est, T_gt)
        q_est = geometry.rotmat_to_quat(T_est[:, :3, :3])
        for b, name in enumerate(batch["name"]):
            frame: Dict[str, Any] = {"name": name, "trans_err_m": float(trans_err[b]), "rot_err_deg": float(rot_err[b]),
                                     "position": T_est[b, :3, 3].tolist(), "quaternion": q_est[b].tolist(),
                                     "pose_est": T_est[b].tolist(), "pose_gt": T_gt[b].tolist(), "ms_network": ms,
                                     "scene": int(batch["scene"][b])}
            if "scene_log_probs" in out:
                frame["scene_pred"] = int(out["scene_log_probs"][b].argmax())
            if mc_samples:
                frame["position_std_m"] = float(out["position_std"][b])
                frame["rotation_std_deg"] = float(out["rotation_var_deg2"][b].sqrt())
            frames.append(frame)
    summary = pose_metrics([f["rot_err_deg"] for f in frames], [f["trans_err_m"] for f in frames])
    summary["ms_network"] = float(np.median([f["ms_network"] for f in frames]))
    if frames and "scene_pred" in frames[0]:
        summary["scene_accuracy"] = float(100.0 * np.mean([f["scene_pred"] == f["scene"] for f in frames]))
    if mc_samples:
        summary["mc_samples"] = int(mc_samples)
        summary["median_position_std_m"] = float(np.median([f["position_std_m"] for f in frames]))
        summary["median_rotation_std_deg"] = float(np.median([f["rotation_std_deg"] for f in frames]))
        summary["spearman_position_std_trans_err"] = spearman_correlation(
            [f["position_std_m"] for f in frames], [f["trans_err_m"] for f in frames])
        summary["spearman_rotation_std_rot_err"] = spearman_correlation(
            [f["rotation_std_deg"] for f in frames], [f["rot_err_deg"] for f in frames])
    return {"summary": summary, "frames": frames}


def format_apr_metrics(summary: Dict[str, Any], title: str = "") -> str:
    """:func:`transpose.evaluate.format_metrics` plus the APR extras (scene accuracy, MC dropout)."""
    lines = [format_metrics(summary, title)]
    if "scene_accuracy" in summary:
        lines.append(f"scene classification {summary['scene_accuracy']:.1f} %")
    if "mc_samples" in summary:
        lines.append(f"MC dropout ({summary['mc_samples']} samples): median std {summary['median_position_std_m'] * 100:.2f} cm"
                     f" / {summary['median_rotation_std_deg']:.2f} deg")
        lines.append(f"Spearman(position std, translation error) {summary['spearman_position_std_trans_err']:.3f}")
        lines.append(f"Spearman(rotation std, rotation error)    {summary['spearman_rotation_std_rot_err']:.3f}")
    return "\n".join(lines)


POSE_CSV_COLUMNS = ("name", "tx", "ty", "tz", "qw", "qx", "qy", "qz", "trans_err_m", "rot_err_deg",
                    "position_std_m", "rotation_std_deg")


def write_apr_results(out_dir: os.PathLike, result: Dict[str, Any], settings: Dict[str, Any],
                      title: str = "") -> Dict[str, Path]:
    """``poses.csv`` (one row per frame: estimated camera-to-world centre and quaternion (w, x, y, z),
    errors, MC dropout spreads or empty), ``results.json`` and ``results.txt`` in ``out_dir``."""
    out_dir = Path(out_dir)
    paths = {"poses": out_dir / "poses.csv", "json": out_dir / "results.json", "text": out_dir / "results.txt"}
    buf = _stdio.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(POSE_CSV_COLUMNS)
    for f in result["frames"]:
        writer.writerow([f["name"], *(f"{v:.6f}" for v in f["position"]), *(f"{v:.8f}" for v in f["quaternion"]),
                         f"{f['trans_err_m']:.6f}", f"{f['rot_err_deg']:.5f}",
                         f"{f['position_std_m']:.6f}" if "position_std_m" in f else "",
                         f"{f['rotation_std_deg']:.5f}" if "rotation_std_deg" in f else ""])
    io.write_text(paths["poses"], buf.getvalue())
    io.write_json(paths["json"], {"summary": result["summary"], "settings": settings, "frames": result["frames"]})
    io.write_text(paths["text"], format_apr_metrics(result["summary"], title) + "\n")
    return paths


# --------------------------------------------------------------------------- batch evaluation


def find_checkpoints(paths: Sequence[str]) -> List[Path]:
    """Checkpoint files among ``paths``: files as given, folders searched for ``*.pt`` / ``*.net``."""
    found: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.suffix in (".pt", ".net") and q.is_file())
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such checkpoint or folder")
    if not found:
        raise FileNotFoundError(f"{', '.join(map(str, paths))}: no *.pt or *.net checkpoints found")
    return found


BATCH_COLUMNS = ("checkpoint", "iteration", "frames", "median_trans_m", "median_rot_deg", "mean_trans_m",
                 "mean_rot_deg")


def batch_evaluate(checkpoints: Sequence[Path], data_for: Any, out_csv: os.PathLike, device: Optional[str] = None,
                   batch_size: int = 8, max_frames: Optional[int] = None,
                   progress: bool = True) -> List[Dict[str, Any]]:
    """Evaluate every checkpoint (sorted by training iteration); write one CSV row each.

    ``data_for(options) -> AprData`` loads the evaluation frames for a checkpoint's options (scene
    ids follow its training scenes). Checkpoints of another kind are skipped with a note; an
    unreadable one is an error naming it.
    """
    rows: List[Dict[str, Any]] = []
    for path in checkpoints:
        try:
            network, options = load_apr_network(path, device)
        except CheckpointError as exc:
            if "expected 'apr'" in str(exc):
                print(f"skipping {path}: not an APR checkpoint")
                continue
            raise
        result = evaluate_apr(network, options, data_for(options), device, batch_size, 0, max_frames)
        s = result["summary"]
        row = {"checkpoint": str(path), "iteration": options["iteration"], **{k: s[k] for k in BATCH_COLUMNS[2:]},
               **{k: v for k, v in s.items() if k.startswith("acc_") or k == "scene_accuracy"}}
        rows.append(row)
        if progress:
            print(f"{path}: iteration {row['iteration']}, median {s['median_trans_m'] * 100:.2f} cm / "
                  f"{s['median_rot_deg']:.2f} deg")
    if not rows:
        raise ValueError("batch-eval: none of the files is an APR checkpoint")
    rows.sort(key=lambda r: (r["iteration"], r["checkpoint"]))
    keys = list(rows[0])
    for r in rows[1:]:
        keys += [k for k in r if k not in keys]
    buf = _stdio.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n", restval="")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else v) for k, v in r.items()})
    io.write_text(out_csv, buf.getvalue())
    return rows
