"""Scene-coordinate regression: end-to-end training through differentiable RANSAC (DSAC*'s train_e2e).

Starts from a ``train_init`` checkpoint and minimises, per frame, the expected pose loss
``sum_h softmax(logits)_h * loss(refined pose_h)`` of DSAC*'s RANSAC (64 hypotheses, 10 px
threshold, alpha 100; loss 1 per degree + 100 per metre, soft clamp at 100), whose gradient with
respect to every predicted coordinate comes from the native core (:func:`transpose.ransac.dsac_loss`).
The network's forward/backward run in torch; the loss runs in float64 C++ threads on the CPU.
RGB (``mode 1``, PnP hypotheses) or RGB-D (``mode 2``: Kabsch hypotheses on camera points from depth).
The result is a checkpoint of kind ``scr`` (same options as the initial network), so ``test.py`` loads it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..data.augment import AugmentParams
from ..ransac import dsac_loss
from .loop import LoopConfig, make_adam, pick_device, seed_everything, train_loop
from .scr import KIND

AUGMENT_CHOICES = ("none", "photometric", "full")


@dataclass
class E2EConfig:
    """Settings of ``train_e2e`` (flag names and defaults follow DSAC*'s train_e2e.py)."""

    scene: str
    init: str                        # train_init checkpoint to start from
    out: str
    section: str = "train"
    mode: int = 1                    # 1: RGB (PnP), 2: RGB-D (Kabsch on depth)
    iterations: int = 100000
    learningrate: float = 1e-6
    hypotheses: int = 64
    threshold: float = 10.0
    inlieralpha: float = 100.0
    maxpixelerror: float = 100.0
    weightrot: float = 1.0
    weighttrans: float = 100.0
    softclamp: float = 100.0
    min_probability: float = 1e-6
    augment: str = "photometric"     # 'none', 'photometric' (brightness / contrast), 'full' (+ scale, rotation)
    image_height: Optional[int] = None
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 10
    resume: bool = False
    max_minutes: Optional[float] = None
    num_workers: int = 0
    cache_mb: float = 2048.0        # decoded frames kept in memory (see SceneDataset)
    threads: int = 0                 # RANSAC threads (0: OpenMP's default)
    device: Optional[str] = None
    logdir: Optional[str] = None
    progress: bool = True
    root: str = "datasets"

    def validate(self) -> "E2EConfig":
        if self.mode not in (1, 2):
            raise ValueError(f"--mode must be 1 (RGB) or 2 (RGB-D) for end-to-end training, got {self.mode}")
        if self.augment not in AUGMENT_CHOICES:
            raise ValueError(f"--augment must be one of {AUGMENT_CHOICES}, got '{self.augment}'")
        for name in ("learningrate", "threshold", "inlieralpha", "maxpixelerror", "softclamp"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.hypotheses < 1 or self.iterations < 1:
            raise ValueError("--hypotheses and --iterations must be positive")
        return self


def _augment_params(kind: str) -> Optional[AugmentParams]:
    if kind == "none":
        return None
    if kind == "photometric":
        return AugmentParams(scale_min=1.0, scale_max=1.0, rotation_deg=0.0)
    return AugmentParams()


def build_dataset(cfg: E2EConfig, image_height: Optional[int]):
    from ..data.scene import SceneDataset

    aug = _augment_params(cfg.augment)
    return SceneDataset(cfg.scene, cfg.section, mode="scr", augment=aug is not None, aug=aug,
                        image_height=image_height, targets="depth" if cfg.mode == 2 else "auto", root=cfg.root,
                        load_depth=False, load_normals=False, cache_mb=cfg.cache_mb)


def camera_points(target: torch.Tensor, mask: torch.Tensor, pose: torch.Tensor) -> np.ndarray:
    """Camera-frame points ``(B, 3, h, w)`` of depth targets: world coords ``(B, 3, h, w)`` mapped by
    the inverse camera-to-world ``pose (B, 4, 4)``; cells without depth get ``z = 0`` (dropped)."""
    B = target.shape[0]
    world = target.double().flatten(2)  # (B, 3, n)
    w2c = torch.linalg.inv(pose.double())
    cam = w2c[:, :3, :3] @ world + w2c[:, :3, 3:]
    cam = torch.where(mask.flatten(1)[:, None], cam, torch.zeros_like(cam))
    return cam.reshape(target.shape).cpu().numpy().reshape(B, 3, *target.shape[2:])


def train_e2e(cfg: E2EConfig) -> Dict[str, Any]:
    """Fine-tune a train_init network through RANSAC; return the loop's summary plus the dataset size."""
    from .scr import load_network

    cfg.validate()
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    net, init_options = load_network(cfg.init, str(device))
    if init_options.get("transpose"):
        raise ValueError(f"{cfg.init}: end-to-end training supports DSAC*-style SCRNet checkpoints only")
    image_height = cfg.image_height if cfg.image_height is not None else init_options.get("image_height")
    dataset = build_dataset(cfg, image_height)
    if cfg.mode == 2 and dataset.targets != "depth":
        raise ValueError(f"{dataset.section_dir}: --mode 2 needs depth/ maps")
    net.train()
    optimizer = make_adam(net.parameters(), lr=cfg.learningrate)
    ransac_options = dict(num_hypotheses=cfg.hypotheses, threshold=cfg.threshold, alpha=cfg.inlieralpha,
                          max_reprojection_error=cfg.maxpixelerror)

    def step(batch: Dict[str, Any], iteration: int) -> Dict[str, torch.Tensor]:
        image = batch["image"].to(device)
        pose = batch["pose"].double()
        K = batch["K"].double()
        coords, _ = net(image)
        kwargs: Dict[str, Any] = {}
        if cfg.mode == 2:
            kwargs["camera_coords"] = camera_points(batch["coords"], batch["mask"], pose)
        # a different hypothesis draw at every iteration, reproducible from the seed
        seeds = [(cfg.seed * 1_000_003 + iteration * 131 + b) % (2 ** 63) for b in range(image.shape[0])]
        loss, info = dsac_loss(coords.double(), K, pose, seed=seeds, weight_rot=cfg.weightrot,
                               weight_trans=cfg.weighttrans, cut=cfg.softclamp, min_probability=cfg.min_probability,
                               num_threads=cfg.threads, return_info=True, **ransac_options, **kwargs)
        ok = [d for d in info if d["status"] == 0]
        metrics = {"loss": loss.float(), "frames_ok": torch.tensor(len(ok) / max(1, len(info)))}
        if ok:
            best = [d["losses"][int(np.argmax(d["probabilities"]))] for d in ok]
            metrics["loss_top_hypothesis"] = torch.tensor(float(np.mean(best)))
            metrics["used_hypotheses"] = torch.tensor(float(np.mean([d["backward_hypotheses"] for d in ok])))
        return metrics

    options = {**net.options(), "image_height": image_height, "mode": cfg.mode,
               "sparse": init_options.get("sparse", False),
               "trained_on": {"scene": str(dataset.scene_dir), "section": cfg.section, "frames": len(dataset)},
               "train_init": init_options.get("train_init"),
               "train_e2e": {k: v for k, v in asdict(cfg).items() if k not in ("scene", "out")}}
    loop_cfg = LoopConfig.from_settings(cfg, kind=KIND, options=options, batch_size=1)
    summary = train_loop(net, optimizer, dataset, step, loop_cfg)
    summary["frames"] = len(dataset)
    summary["network"] = net
    return summary


__all__ = ["E2EConfig", "train_e2e", "camera_points"]
