"""Every command's argument parser and entry point.

The root scripts (``train_init.py``, ``test.py``, ``visualize.py``) and the console script
``transpose <command>`` both land here, with the same flags. Flag names follow DSAC* where it has
them (``--learningrate``, ``--hypotheses``, ``--threshold``, ``--inlieralpha``, ...).

User mistakes end with one line ``error: ...`` naming the file or argument, and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

# --------------------------------------------------------------------------- shared flags


def _add_scene_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("scene", help="scene folder, or a scene name under --root (e.g. 7scenes_chess, synthetic_indoor)")
    p.add_argument("--root", default="datasets", help="where scene names are looked up (default: ./datasets)")


def _add_ransac_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("RANSAC (defaults as DSAC*)")
    g.add_argument("--hypotheses", "-hyps", type=int, default=64, help="RANSAC hypotheses (default 64)")
    g.add_argument("--threshold", "-t", type=float, default=10.0, help="inlier threshold in px (default 10)")
    g.add_argument("--inlieralpha", "-ia", type=float, default=100.0, help="soft-inlier score scale alpha (default 100)")
    g.add_argument("--maxpixelerror", "-maxerrr", type=float, default=100.0,
                   help="reprojection errors are clamped to this many px (default 100)")
    g.add_argument("--adaptive", action="store_true", help="draw hypotheses until --confidence is reached")
    g.add_argument("--confidence", type=float, default=0.999)
    g.add_argument("--uncertainty_use", choices=("auto", "none", "drop", "weight"), default="auto",
                   help="use the predicted sigma: drop the most uncertain cells, or weight cells by 1/sigma^2; "
                        "auto (default): weight for cluster networks whose sigma sees the cluster confidence "
                        "(measured to help), none otherwise")
    g.add_argument("--drop_quantile", type=float, default=0.5, help="with --uncertainty_use drop: keep cells below this sigma quantile")
    g.add_argument("--robust_scale", type=_auto_or(_non_negative(float, "--robust_scale")), default="auto",
                   metavar="PX", help="after the refinement, re-fit the inliers with a Cauchy loss of this scale in "
                   "px (0: off, DSAC*'s least squares); auto (default): 1 px per 120 px of image height for networks "
                   "with a readout (measured to help them), off otherwise")


def _add_readout_args(p: argparse.ArgumentParser) -> None:
    # literal defaults (those of transpose.train.readout): building a parser must not import torch
    p.add_argument("--readout_dim", type=_positive(int, "--readout_dim"), default=256,
                   help="principal components of the head's features the readout reads (default 256, or all "
                   "the head's channels when it has fewer)")
    p.add_argument("--readout_ridge", type=_non_negative(float, "--readout_ridge"), default=10.0,
                   help="ridge weight of the readout, in pseudo-observations per cluster (default 10)")


def _add_section_weighting_arg(p, what: str) -> None:
    p.add_argument("--section_weighting", choices=("sections", "frames"), default="sections",
                   help=f"with several sections, in {what}: 'sections' (default) weighs each about as much as the "
                   "largest (a small section's frames drawn that many times more often, with fresh augmentation: "
                   "a few real frames beside many renders count); 'frames' counts every frame once")


def _bounded(kind: Callable, name: str, positive: bool) -> Callable:
    """argparse type: ``kind(text)`` > 0 (``positive``) or >= 0; NaN fails either, and a non-number
    gets a line naming the flag too."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "integer" if kind is int else "number"
            need = f"a positive {what}" if positive else f"{'an' if kind is int else 'a'} {what} >= 0"
            raise argparse.ArgumentTypeError(f"{name} must be {need}, got '{text}'") from None
        if not (value > 0 if positive else value >= 0):
            raise argparse.ArgumentTypeError(f"{name} must be {'positive' if positive else '>= 0'}, got {text}")
        return value
    return parse


def _positive(kind: Callable, name: str) -> Callable:
    """argparse type: ``kind(text)`` > 0."""
    return _bounded(kind, name, positive=True)


def _non_negative(kind: Callable, name: str) -> Callable:
    """argparse type: ``kind(text)`` >= 0."""
    return _bounded(kind, name, positive=False)


def _auto_or(kind: Callable) -> Callable:
    """argparse type: the word ``auto`` or ``kind(text)``."""
    def parse(text: str):
        return "auto" if text == "auto" else kind(text)
    return parse


def _scales(text: str) -> tuple:
    """argparse type of ``--scales``: a comma list of test zooms, 1 among them (see evaluate.check_scales)."""
    from .evaluate import check_scales

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scales must be a comma list of numbers, got '{text}'") from None
    try:
        return check_scales(values)
    except ValueError as e:  # its message starts with "scales"
        raise argparse.ArgumentTypeError(f"--{e}") from None


def _fraction(name: str, closed: bool = False) -> Callable:
    """argparse type: a float in [0, 1) (``closed``: [0, 1])."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got '{text}'") from None
        if not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
            raise argparse.ArgumentTypeError(f"{name} must be in [0, 1{']' if closed else ')'}, got {text}")
        return value
    return parse


def _unit(name: str) -> Callable:
    """argparse type: a float in [0, 1]."""
    return _fraction(name, closed=True)


# --------------------------------------------------------------------------- train_init


def train_init_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_init.py", description="Train a scene-coordinate network from scratch "
                                "(DSAC*'s initialisation), optionally with per-cell uncertainty.")
    _add_scene_args(p)
    p.add_argument("network", help="output checkpoint (e.g. out.net); --resume continues it")
    p.add_argument("--section", default="train", help="section to train on (default: train)")
    p.add_argument("--iterations", "-iter", type=_positive(int, "--iterations"), default=100000)
    p.add_argument("--learningrate", "-lr", type=_positive(float, "--learningrate"), default=5e-4)
    p.add_argument("--schedule", choices=("onecycle", "step", "constant"), default="onecycle",
                   help="learning-rate schedule: onecycle (as ACE), step (halve every --lrssteps, as DSAC*)")
    p.add_argument("--lrssteps", type=int, default=50000)
    p.add_argument("--batch_size", type=_positive(int, "--batch_size"), default=1)
    p.add_argument("--mode", "-m", type=int, choices=(0, 1, 2), default=1,
                   help="0: RGB only (heuristic depth targets), 1: RGB + 3D targets, 2: RGB-D")
    p.add_argument("--sparse", action="store_true", help="use sparse init/ targets instead of depth")
    p.add_argument("--softclamp", "-sc", type=float, default=100.0)
    p.add_argument("--hardclamp", "-hc", type=float, default=1000.0)
    p.add_argument("--mindepth", "-md", type=float, default=0.1)
    p.add_argument("--inittolerance", "-itol", type=float, default=0.1)
    p.add_argument("--targetdepth", "-td", type=float, default=10.0)
    p.add_argument("--uncertainty", action="store_true", help="predict sigma per cell (Gaussian NLL)")
    p.add_argument("--nll_weight", type=float, default=1.0)
    p.add_argument("--tiny", action="store_true", help="half-width network (DSAC*'s --tiny)")
    p.add_argument("--width", type=_positive(float, "--width"), default=1.0, help="channel multiplier (1.0 = DSAC*)")
    p.add_argument("--clusters", type=int, default=0,
                   help="K > 0: predict one of K scene-point clusters plus an offset per cell (learns a scene "
                   "from scratch much faster); 0: direct regression as DSAC* (default)")
    p.add_argument("--readout", type=_non_negative(int, "--readout"), default=0, metavar="PASSES",
                   help="with --clusters: after training, fit each cluster's offset in closed form (ridge regression "
                   "on the head's features) over PASSES passes of the training frames, the first plain, the others "
                   "augmented; replaces the offset head, which barely learns in a CPU budget (default 0: off)")
    _add_readout_args(p)
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from this coordinate network's weights (fine-tuning: its width, head and scene "
                   "centre are kept; --width / --clusters / --norm / --uncertainty are then ignored; a cluster "
                   "network with uncertainty saved before sigma_confidence gains that term, starting at zero)")
    p.add_argument("--norm", choices=("group", "none"), default="group",
                   help="GroupNorm after each convolution (default; converges ~10x faster) or none (DSAC*'s layers)")
    p.add_argument("--image_height", type=_positive(int, "--image_height"), default=None,
                   help="resize images to this height (DSAC* uses 480); default: keep")
    p.add_argument("--no_augment", action="store_true", help="disable scale / rotation / photometric augmentation")
    p.add_argument("--aug_scale", type=float, nargs=2, default=(2 / 3, 3 / 2), metavar=("MIN", "MAX"),
                   help="random zoom range (default DSAC*'s 0.667 1.5)")
    p.add_argument("--aug_rotation", type=float, default=30.0,
                   help="random in-plane rotation range in degrees, +- (default DSAC*'s 30)")
    p.add_argument("--aug_brightness", type=_fraction("--aug_brightness"), default=0.1,
                   help="random brightness factor 1 +- this, in [0, 1) (default DSAC*'s 0.1)")
    p.add_argument("--aug_contrast", type=_fraction("--aug_contrast"), default=0.1,
                   help="random contrast factor 1 +- this, in [0, 1) (default DSAC*'s 0.1)")
    p.add_argument("--aug_relight", type=_fraction("--aug_relight"), default=0.0,
                   help="strength in [0, 1) of random directional shading from the frames' normal maps "
                   "(frames without normal/ are left as they are; default 0: off)")
    p.add_argument("--aug_shadow", type=_unit("--aug_shadow"), default=0.0,
                   help="probability in [0, 1] of a random soft-edged shadow polygon per frame (default 0)")
    p.add_argument("--aug_camera", type=_unit("--aug_camera"), default=0.0,
                   help="strength in [0, 1] of random lens blur (up to 0.8 px), vignetting, tone curve and "
                   "sensor noise (default 0: off)")
    p.add_argument("--aug_view", type=_fraction("--aug_view"), default=0.0, metavar="FRACTION",
                   help="novel views from depth: re-render a frame from a camera moved by up to this fraction of "
                   "its median depth, turned to keep looking at the same place (needs depth maps; default 0: off)")
    p.add_argument("--aug_view_prob", type=_unit("--aug_view_prob"), default=0.5,
                   help="probability in [0, 1] that a frame is re-rendered so (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint_every", type=_positive(int, "--checkpoint_every"), default=1000)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in <network>")
    p.add_argument("--max_minutes", type=float, default=None, help="stop (and save) after this wall-clock time")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--cache_mb", type=float, default=2048.0,
                   help="keep decoded frames in memory up to this many MiB (default 2048; 0: read from disk every time)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--logdir", default=None, help="TensorBoard + CSV logs (default: <network>_log/)")
    g = p.add_argument_group("TransPose sim-to-real (--section may list several: train_sim,train_real)")
    _add_section_weighting_arg(g, "training (frames or contrastive anchors) and the readout")
    g.add_argument("--contrastive", type=float, default=0.0, metavar="WEIGHT",
                   help="weight of the supervised contrastive loss on mined sim/real pairs (0: off)")
    g.add_argument("--temperature", type=_positive(float, "--temperature"), default=0.07, help="SupCon temperature")
    g.add_argument("--dense_contrastive", type=float, default=0.0, metavar="WEIGHT",
                   help="weight of the per-cell contrastive term: cells of mined sim/real frames that see the same "
                   "scene point (within --dense_radius) are pulled together (0: off)")
    g.add_argument("--dense_radius", type=_positive(float, "--dense_radius"), default=0.05, metavar="METRES",
                   help="cells whose target points are closer than this are positives (default 0.05)")
    g.add_argument("--dense_cross_only", action="store_true",
                   help="per-cell positives only between a sim and a real frame (appearance invariance only)")
    g.add_argument("--task", choices=("coords", "depth", "normal"), default="coords",
                   help="what to regress: scene coordinates, or a depth / normal network for --mlr")
    g.add_argument("--mlr", default=None, help="fuse frozen task networks, e.g. depth,normal")
    g.add_argument("--mlr_nets", default=None,
                   help="their checkpoints, comma-separated (default: <network folder>/<task>.net)")
    return p


def _init_config_from_args(args: argparse.Namespace):
    from .losses import InitLossConfig
    from .train.scr import InitConfig

    return InitConfig(
        scene=args.scene, out=args.network, section=args.section, iterations=args.iterations,
        learningrate=args.learningrate, schedule=args.schedule, lrssteps=args.lrssteps, batch_size=args.batch_size,
        loss=InitLossConfig(mode=args.mode, softclamp=args.softclamp, hardclamp=args.hardclamp,
                            mindepth=args.mindepth, inittolerance=args.inittolerance, targetdepth=args.targetdepth),
        sparse=args.sparse, uncertainty=args.uncertainty, nll_weight=args.nll_weight, width=args.width,
        norm=args.norm, clusters=args.clusters, readout=args.readout, readout_dim=args.readout_dim,
        readout_ridge=args.readout_ridge, balance_sections=args.section_weighting == "sections", tiny=args.tiny,
        image_height=args.image_height, augment=not args.no_augment,
        aug_scale=tuple(args.aug_scale), aug_rotation=args.aug_rotation,
        aug_brightness=args.aug_brightness, aug_contrast=args.aug_contrast, aug_relight=args.aug_relight,
        aug_shadow=args.aug_shadow, aug_camera=args.aug_camera, aug_view=args.aug_view,
        aug_view_prob=args.aug_view_prob, init=args.init, seed=args.seed,
        checkpoint_every=args.checkpoint_every, resume=args.resume, max_minutes=args.max_minutes,
        num_workers=args.workers, cache_mb=args.cache_mb, device=args.device, logdir=args.logdir, root=args.root)


def run_train_init(args: argparse.Namespace) -> Dict:
    from .train import scr, transfer

    if transfer.uses_transfer(args):  # several sections, --contrastive, --dense_contrastive, --task or --mlr
        cfg, trainer = transfer.config_from_args(args), transfer.train_transfer
    else:
        cfg, trainer = _init_config_from_args(args), scr.train_init
    summary = trainer(cfg)
    _print_trained(summary, cfg.out, "loss")
    return summary


def _print_trained(summary: Dict, out: str, loss_name: str) -> None:
    """One line after SCR training (rank 0 only): iterations, time, speed, the last loss, the checkpoint."""
    from .train.distributed import is_main_process

    if is_main_process():
        m = summary["metrics"]
        print(f"trained {summary['iterations']} iterations in {summary['seconds']:.0f} s "
              f"({m.get('it_per_s', float('nan')):.2f} it/s) on {summary['frames']} frames; "
              f"last {loss_name} {m.get('loss', float('nan')):.4g}; saved {out}")


# --------------------------------------------------------------------------- train_e2e


def train_e2e_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_e2e.py", description="Fine-tune a train_init network end-to-end "
                                "through differentiable RANSAC (DSAC*'s expected pose loss).")
    _add_scene_args(p)
    p.add_argument("network_in", help="train_init checkpoint to start from")
    p.add_argument("network", help="output checkpoint (e.g. e2e.net); --resume continues it")
    p.add_argument("--section", default="train", help="section to train on (default: train)")
    p.add_argument("--mode", "-m", type=int, choices=(1, 2), default=1,
                   help="1: RGB (PnP hypotheses), 2: RGB-D (Kabsch hypotheses on depth) (default 1)")
    p.add_argument("--iterations", "-iter", type=_positive(int, "--iterations"), default=100000)
    p.add_argument("--learningrate", "-lr", type=_positive(float, "--learningrate"), default=1e-6)
    p.add_argument("--hypotheses", "-hyps", type=_positive(int, "--hypotheses"), default=64)
    p.add_argument("--threshold", "-t", type=_positive(float, "--threshold"), default=10.0, help="inlier threshold (px)")
    p.add_argument("--inlieralpha", "-ia", type=_positive(float, "--inlieralpha"), default=100.0)
    p.add_argument("--maxpixelerror", "-maxerrr", type=_positive(float, "--maxpixelerror"), default=100.0)
    p.add_argument("--weightrot", "-wr", type=float, default=1.0, help="pose loss per degree (default 1)")
    p.add_argument("--weighttrans", "-wt", type=float, default=100.0, help="pose loss per metre (default 100)")
    p.add_argument("--softclamp", "-sc", type=_positive(float, "--softclamp"), default=100.0,
                   help="pose loss above this becomes sqrt(softclamp * loss) (default 100)")
    p.add_argument("--min_probability", type=float, default=1e-6,
                   help="hypotheses less likely than this are skipped in the backward pass")
    p.add_argument("--augment", choices=("none", "photometric", "full"), default="photometric",
                   help="photometric: brightness / contrast; full: also scale and rotation (default photometric)")
    p.add_argument("--image_height", type=_positive(int, "--image_height"), default=None,
                   help="default: the initial network's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint_every", type=_positive(int, "--checkpoint_every"), default=1000)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in <network>")
    p.add_argument("--max_minutes", type=float, default=None, help="stop (and save) after this wall-clock time")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--cache_mb", type=float, default=2048.0,
                   help="keep decoded frames in memory up to this many MiB (default 2048; 0: read from disk every time)")
    p.add_argument("--threads", type=int, default=0, help="RANSAC threads (default: all)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--logdir", default=None, help="TensorBoard + CSV logs (default: <network>_log/)")
    return p


def run_train_e2e(args: argparse.Namespace) -> Dict:
    from .train.e2e import E2EConfig, train_e2e as _train

    cfg = E2EConfig(scene=args.scene, init=args.network_in, out=args.network, section=args.section, mode=args.mode,
                    iterations=args.iterations, learningrate=args.learningrate, hypotheses=args.hypotheses,
                    threshold=args.threshold, inlieralpha=args.inlieralpha, maxpixelerror=args.maxpixelerror,
                    weightrot=args.weightrot, weighttrans=args.weighttrans, softclamp=args.softclamp,
                    min_probability=args.min_probability, augment=args.augment, image_height=args.image_height,
                    seed=args.seed, checkpoint_every=args.checkpoint_every, resume=args.resume,
                    max_minutes=args.max_minutes, num_workers=args.workers, cache_mb=args.cache_mb, threads=args.threads,
                    device=args.device, logdir=args.logdir, root=args.root)
    summary = _train(cfg)
    _print_trained(summary, cfg.out, "expected pose loss")
    return summary


# --------------------------------------------------------------------------- test


def test_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="test.py", description="Localize every frame of a section and report "
                                "median errors, accuracy at thresholds and time per frame.")
    _add_scene_args(p)
    p.add_argument("network", nargs="?", help="checkpoint from train_init / train_e2e (or use --search_dir)")
    p.add_argument("--section", default="test", help="section to localize (default: test)")
    p.add_argument("--mode", "-m", type=int, choices=(0, 1, 2), default=None,
                   help="2: RGB-D (Kabsch hypotheses from depth); default: the checkpoint's mode if 2, else RGB")
    p.add_argument("--sparse", action="store_true", help="coordinate errors against sparse init/ targets instead of depth")
    p.add_argument("--save_map", action="store_true", help="write per-frame .npz maps (coordinates, sigma, errors)")
    p.add_argument("--out", default=None, help="output folder (default: <network without suffix>_<section>/)")
    p.add_argument("--search_dir", default=None, help="evaluate every checkpoint (*.net, *.pt) under this folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--frames", type=int, default=None, help="localize only the first N frames")
    p.add_argument("--scales", type=_auto_or(_scales), default="auto", metavar="S1,S2",
                   help="zooms of each test image whose cells are pooled into one RANSAC, 1 among them (e.g. "
                   "1,1.5: one more forward pass at 1.5x); auto (default): 1,1.5 for cluster networks (measured "
                   "to help them), 1 otherwise")
    _add_ransac_args(p)
    return p


def _ransac_options(args: argparse.Namespace):
    from .evaluate import RansacOptions

    return RansacOptions(hypotheses=args.hypotheses, threshold=args.threshold, inlieralpha=args.inlieralpha,
                         maxpixelerror=args.maxpixelerror, adaptive=args.adaptive, confidence=args.confidence,
                         seed=args.seed, uncertainty=args.uncertainty_use, drop_quantile=args.drop_quantile,
                         robust_scale=args.robust_scale)


def evaluate_checkpoint(args: argparse.Namespace, network: Path, out_dir: Optional[Path] = None) -> Dict:
    """Localize ``args.section`` with one checkpoint; write result files; return the summary."""
    from .data.scene import SceneDataset, coordinate_targets
    from .evaluate import format_metrics, localize_section, summarize, write_results
    from .train.scr import load_network

    net, options = load_network(network, args.device)
    mode = args.mode if args.mode is not None else (2 if options.get("mode") == 2 else 1)
    if args.uncertainty_use == "auto":
        args = argparse.Namespace(**{**vars(args), "uncertainty_use": "weight" if options.get("sigma_confidence") else "none"})
    if args.uncertainty_use != "none" and not options.get("uncertainty"):
        raise ValueError(f"{network}: --uncertainty_use {args.uncertainty_use} needs a network trained with --uncertainty")
    # coordinate errors against depth (exact at every cell centre) unless --sparse asks for init/
    targets = coordinate_targets(args.scene, args.section, args.sparse, args.root)
    dataset = SceneDataset(args.scene, args.section, mode="scr", image_height=options.get("image_height"),
                           targets=targets, root=args.root, load_depth=True, load_normals=False)
    if args.frames:
        dataset = SceneDataset(args.scene, args.section, mode="scr", image_height=options.get("image_height"),
                               targets=targets, root=args.root, load_depth=True, load_normals=False,
                               frames=dataset.frames[: args.frames])
    if args.robust_scale == "auto":
        # the readout's coordinates are a few cm off, with a tail of cells a few px off: a Cauchy
        # loss bounds the tail's pull (measured on the demo, 160x120: 1 px best of 1 / 1.5 / 2 / 3)
        from .train.scr import output_size_for

        height = output_size_for(dataset.scene_dir, args.section, options.get("image_height"))[0]
        args = argparse.Namespace(**{**vars(args), "robust_scale": height / 120.0 if options.get("readout_dim") else 0.0})
    from .evaluate import CLUSTER_TEST_SCALES

    scales = args.scales if args.scales != "auto" else (CLUSTER_TEST_SCALES if options.get("num_clusters") else (1.0,))
    out_dir = Path(out_dir or args.out or f"{Path(network).with_suffix('')}_{args.section}")
    opts = _ransac_options(args)
    results = localize_section(net, dataset, opts, rgbd=(mode == 2),
                               save_map_dir=out_dir / "maps" if args.save_map else None, scales=scales)
    summary = summarize(results)
    title = f"{dataset.scene_dir.name} / {args.section}  ({network})"
    settings = {"network": str(network), "scene": str(dataset.scene_dir), "section": args.section,
                "mode": mode, "scales": list(scales), "ransac": vars(opts), "network_options": {k: v for k, v in options.items()
                                                                         if k not in ("train_init", "train_e2e")}}
    paths = write_results(out_dir, results, summary, settings, title)
    print(format_metrics(summary, title))
    print(f"wrote {paths['text']}, {paths['json']}, {paths['poses']}" + (f", maps in {out_dir / 'maps'}" if args.save_map else ""))
    return summary


def run_test(args: argparse.Namespace) -> Dict:
    if args.search_dir:
        from . import io

        root = Path(args.search_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"--search_dir {root}: not a folder")
        nets = sorted(p for p in root.rglob("*") if p.suffix in (".net", ".pt") and p.is_file())
        if not nets:
            raise FileNotFoundError(f"--search_dir {root}: no *.net or *.pt checkpoints found")
        rows = []
        for net in nets:
            s = evaluate_checkpoint(args, net, Path(f"{net.with_suffix('')}_{args.section}"))
            rows.append({"network": str(net), **s})
        keys = list(rows[0])
        io.write_text(root / f"search_{args.section}.csv",
                      ",".join(keys) + "\n" + "\n".join(",".join(str(r.get(k, "")) for k in keys) for r in rows) + "\n")
        print(f"wrote {root / f'search_{args.section}.csv'}")
        return {"rows": rows}
    if not args.network:
        raise ValueError("test: give a network checkpoint or --search_dir")
    return evaluate_checkpoint(args, Path(args.network))


# --------------------------------------------------------------------------- visualize


def visualize_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visualize.py", description="Figures from a test output folder "
                                "(written by test.py --save_map) and a training log.")
    p.add_argument("output_dir", help="a test output folder (results.json, maps/)")
    p.add_argument("--keywords", default="uncertainty,results,trajectory,coords",
                   help="comma list of: uncertainty, results, loss, coords, trajectory")
    p.add_argument("--log", default=None, help="training log.csv for 'loss' (default: found from results.json)")
    p.add_argument("--figures", default=None, help="where PNGs go (default: <output_dir>/figures)")
    return p


def run_visualize(args: argparse.Namespace) -> Dict:
    from . import viz

    return viz.make_figures(Path(args.output_dir), [k.strip() for k in args.keywords.split(",") if k.strip()],
                            log=Path(args.log) if args.log else None,
                            figures_dir=Path(args.figures) if args.figures else None)


# --------------------------------------------------------------------------- demo


def demo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="transpose demo", description="Render the default synthetic scene if missing, "
                                "train a coordinate network with uncertainty, localize the test frames, print the "
                                "results and write figures (about 15 minutes on 2 CPU cores).")
    p.add_argument("--root", default="datasets")
    p.add_argument("--scene", default="synthetic_indoor")
    p.add_argument("--out", default="output/demo", help="where the network, results and figures go")
    p.add_argument("--minutes", type=_positive(float, "--minutes"), default=None,
                   help="training budget in minutes (default 9, 1 with --quick; the readout fit takes 1-3 minutes more)")
    p.add_argument("--iterations", type=int, default=12000,
                   help="training iterations (default 12000; on most 2-core machines the --minutes budget ends "
                   "training first)")
    # 160x120 images: a quarter of the cost of 320x240 per step, so four times the steps in the same
    # budget, and each cell's receptive field covers more of the view (measured: 11 cm / 2.2 deg median on
    # test_sim against 25 cm / 5.9 deg at 320x240 after the same 25 CPU minutes)
    p.add_argument("--image_height", type=int, default=120)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--clusters", type=int, default=1024,
                   help="train_init's --clusters (default 1024; 0: DSAC*'s regression, which does not converge "
                   "in the demo's budget)")
    # 4 passes over the default scene's 900 training frames (at the default 256 components): measured on
    # three networks of this recipe, 79.7-84.0 % within 5 cm / 5 deg on 300 test_sim frames against
    # 72.7-74.3 % with 2 passes at 64 components; 8 passes no better. ~75 s on a fast 2-core machine,
    # ~3 min on a slow one, which is why the training budget is 9 minutes.
    p.add_argument("--readout", type=_non_negative(int, "--readout"), default=4,
                   help="train_init's --readout passes (default 4; 0: keep the offset head)")
    p.add_argument("--quick", action="store_true", help="a tiny scene and a one-minute budget (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    return p


def run_demo(args: argparse.Namespace) -> Dict:
    from .data import layout

    scene_dir = Path(args.root) / (args.scene + ("_tiny" if args.quick else ""))
    t0 = time.time()
    if not layout.is_complete(scene_dir):
        from .data.synthetic import default_workers, render_scene

        print(f"rendering the synthetic scene into {scene_dir} ...")
        size = dict(frames=60, width=160, height=120) if args.quick else {}
        render_scene(scene_dir, kind="indoor", seed=args.seed, workers=default_workers(), **size)
    t_render = time.time() - t0
    out = Path(args.out)
    network = out / "scr.net"
    minutes = args.minutes if args.minutes is not None else (1.0 if args.quick else 9.0)
    train_args = train_init_parser().parse_args([
        str(scene_dir), str(network), "--section", "train_sim", "--uncertainty", "--iterations",
        str(args.iterations), "--max_minutes", str(minutes), "--image_height", str(args.image_height),
        "--width", str(args.width), "--clusters", str(args.clusters), "--seed", str(args.seed), "--checkpoint_every", "500", "--resume",
        "--readout", str(args.readout if args.clusters else 0),
        # the cluster head learns several times faster at 3e-4 than at 1e-3 or 2e-3 (measured), and the
        # demo scene's cameras barely roll: DSAC*'s +-30 deg / 0.67-1.5 zoom only slows it down here
        "--learningrate", "3e-4", "--aug_scale", "0.8", "1.25", "--aug_rotation", "5",
        # half the frames re-rendered from up to 0.3 x their depth away (measured, 20 one-core minutes:
        # 56.3 -> 62.3 % within 5 cm / 5 deg on test_sim; 0.1 / 0.2 in between; see DESIGN.md)
        "--aug_view", "0.3"])
    t1 = time.time()
    run_train_init(train_args)
    t_train = time.time() - t1
    test_args = test_parser().parse_args([str(scene_dir), str(network), "--section", "test_sim", "--save_map",
                                          "--out", str(out / "test_sim")])
    t2 = time.time()
    summary = run_test(test_args)
    t_test = time.time() - t2
    figs = run_visualize(visualize_parser().parse_args([str(out / "test_sim"), "--keywords",
                                                       "uncertainty,results,loss,coords,trajectory",
                                                       "--log", str(out / "scr_log" / "log.csv")]))
    print(f"demo: render {t_render:.0f} s, train {t_train:.0f} s, test {t_test:.0f} s; figures in {figs.get('dir')}")
    return summary


# =========================================================================== apr (absolute pose regression)
# The APR branch's section: `transpose apr train|test|batch-eval` (and the train_apr.py shim).
# Logic lives in transpose.train.apr; this section only parses flags and prints.


def _add_apr_data_args(p: argparse.ArgumentParser, default_section: str) -> None:
    g = p.add_argument_group("data: scene folders (--scene, repeatable) or a pose list (--poselist + --images)")
    g.add_argument("--scene", action="append", default=[],
                   help="scene folder or name under --root; repeat for multi-scene training (ids in this order)")
    g.add_argument("--section", default=default_section, help=f"section of the scene folders (default: {default_section})")
    g.add_argument("--root", default="datasets", help="where scene names are looked up (default: ./datasets)")
    g.add_argument("--poselist", default=None,
                   help="multi-scene CSV (scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4) or Cambridge dataset_*.txt")
    g.add_argument("--images", default=None, help="folder the pose list's image paths are relative to "
                   "(default: the pose list's folder)")
    g.add_argument("--quaternion_frame", choices=("auto", "c2w", "w2c"), default="auto",
                   help="CSV quaternions: auto (Cambridge scenes w2c, 7-Scenes c2w), or force one")


def apr_parser() -> argparse.ArgumentParser:
    from .models.apr import APR_MODELS

    p = argparse.ArgumentParser(prog="transpose apr", description="Absolute pose regression baselines (PoseNet, "
                                "Bayesian PoseNet, MS-Transformer, HyperPose): train, test, evaluate every checkpoint.")
    sub = p.add_subparsers(dest="apr_command", required=True, metavar="{train,test,batch-eval}")

    t = sub.add_parser("train", prog="transpose apr train", help="train an APR network on the shared loop",
                       description="Train an APR network. Hyperparameters come from --config (the originals' "
                       "7Scenes_config.json / CambridgeLandmarks_config.json, or your own JSON); flags override them.")
    t.add_argument("network", help="output checkpoint (e.g. posenet.pt); --resume continues it")
    t.add_argument("--model", choices=APR_MODELS, default="posenet")
    t.add_argument("--config", default="7Scenes_config.json",
                   help="JSON config: a shipped name (7Scenes_config.json, CambridgeLandmarks_config.json) or a path")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (JSON value), e.g. --set backbone=resnet34 --set backbone_width=16")
    _add_apr_data_args(t, "train")
    t.add_argument("--input_size", type=_positive(int, "--input_size"), default=224,
                   help="crop size in px (the shorter side is resized to 256/224 of it; default 224)")
    t.add_argument("--iterations", "-iter", type=_positive(int, "--iterations"), default=None,
                   help="default: the config's n_epochs x frames / batch_size")
    t.add_argument("--batch_size", type=_positive(int, "--batch_size"), default=None, help="default: the config's")
    t.add_argument("--learningrate", "-lr", type=_positive(float, "--learningrate"), default=None,
                   help="default: the config's lr")
    t.add_argument("--equalize", action=argparse.BooleanOptionalAction, default=None,
                   help="draw every scene equally often (default: the config's equalize_scenes)")
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="colour jitter (default: on unless the config says no_augment); random crops always")
    t.add_argument("--snapshot_every", type=int, default=None,
                   help="keep a copy every N iterations in <network>_snapshots/ for batch-eval "
                   "(default: the config's n_freq_checkpoint epochs; 0: none)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint_every", type=_positive(int, "--checkpoint_every"), default=1000)
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in <network>")
    t.add_argument("--max_minutes", type=float, default=None, help="stop (and save) after this wall-clock time")
    t.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    t.add_argument("--logdir", default=None, help="TensorBoard + CSV logs (default: <network>_log/)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 is "
                   "often fastest on a busy machine)")

    e = sub.add_parser("test", prog="transpose apr test", help="evaluate one checkpoint",
                       description="Predict the pose of every frame; report median errors and accuracy; write "
                       "poses.csv, results.json, results.txt. --mc_samples N: Bayesian PoseNet (MC dropout).")
    e.add_argument("network", help="checkpoint written by 'transpose apr train'")
    _add_apr_data_args(e, "test")
    e.add_argument("--mc_samples", type=int, default=0,
                   help="Monte Carlo dropout samples per frame (>= 2): mean pose, variance, Spearman(variance, error)")
    e.add_argument("--batch_size", type=_positive(int, "--batch_size"), default=8)
    e.add_argument("--frames", type=_positive(int, "--frames"), default=None, help="only the first N frames")
    e.add_argument("--out", default=None, help="output folder (default: <network without suffix>_<section>/)")
    e.add_argument("--seed", type=int, default=0, help="seed of the dropout masks with --mc_samples")
    e.add_argument("--device", default=None)
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")

    b = sub.add_parser("batch-eval", prog="transpose apr batch-eval", help="evaluate every checkpoint: CSV + plot",
                       description="Evaluate every APR checkpoint given (files, or folders searched for *.pt / "
                       "*.net, e.g. <network>_snapshots/) on one data set; write a CSV row per checkpoint and a "
                       "plot of the median errors against the training iteration.")
    b.add_argument("checkpoints", nargs="+", help="checkpoint files or folders")
    _add_apr_data_args(b, "test")
    b.add_argument("--out", default=None, help="CSV file (default: batch_eval_<section>.csv next to the first checkpoint)")
    b.add_argument("--figure", default=None, help="PNG file (default: the CSV path with .png)")
    b.add_argument("--batch_size", type=_positive(int, "--batch_size"), default=8)
    b.add_argument("--frames", type=_positive(int, "--frames"), default=None, help="only the first N frames")
    b.add_argument("--device", default=None)
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return p


def _apr_train_config(args: argparse.Namespace):
    from .train.apr import AprTrainConfig, parse_overrides

    return AprTrainConfig(
        out=args.network, model=args.model, config=args.config, overrides=parse_overrides(args.set),
        scenes=list(args.scene), section=args.section, poselist=args.poselist, images=args.images,
        quaternion_frame=args.quaternion_frame, root=args.root, input_size=args.input_size,
        iterations=args.iterations, batch_size=args.batch_size, learningrate=args.learningrate,
        equalize=args.equalize, augment=args.augment, snapshot_every=args.snapshot_every, seed=args.seed,
        checkpoint_every=args.checkpoint_every, resume=args.resume, max_minutes=args.max_minutes,
        num_workers=args.workers, device=args.device, logdir=args.logdir, threads=args.threads)


def run_apr_train(args: argparse.Namespace) -> Dict:
    from .train.apr import train_apr as _train

    cfg = _apr_train_config(args)
    summary = _train(cfg)
    m = summary["metrics"]
    print(f"trained {summary['iterations']} of {summary['iterations_total']} iterations in {summary['seconds']:.0f} s "
          f"({m.get('it_per_s', float('nan')):.2f} it/s, batch {summary['batch_size']}) on {summary['frames']} frames "
          f"of {summary['scenes']} scene(s); last loss {m.get('loss', float('nan')):.4g}, training median error "
          f"{m.get('trans_err_m', float('nan')) * 100:.1f} cm / {m.get('rot_err_deg', float('nan')):.1f} deg; "
          f"saved {cfg.out}")
    return summary


def _apr_data_tag(args: argparse.Namespace) -> str:
    return args.section if args.scene else Path(args.poselist or "poselist").stem


def run_apr_test(args: argparse.Namespace) -> Dict:
    from .train.apr import (evaluate_apr, format_apr_metrics, load_apr_network, load_frames, set_cpu_threads,
                             write_apr_results)

    set_cpu_threads(args.threads)
    if args.mc_samples < 0 or args.mc_samples == 1:
        raise ValueError(f"--mc_samples must be 0 (off) or at least 2, got {args.mc_samples}")
    network, options = load_apr_network(args.network, args.device)
    data = load_frames(args.scene, args.section, args.poselist, args.images, args.root, args.quaternion_frame,
                       scene_names=options["scene_names"])
    result = evaluate_apr(network, options, data, args.device, args.batch_size, args.mc_samples, args.frames,
                          args.seed)
    out_dir = Path(args.out or f"{Path(args.network).with_suffix('')}_{_apr_data_tag(args)}")
    title = f"{options['model']}: {data.description}  ({args.network})"
    settings = {"network": str(args.network), "data": data.description, "mc_samples": args.mc_samples,
                "network_options": {k: v for k, v in options.items() if k != "train_apr"}}
    paths = write_apr_results(out_dir, result, settings, title)
    print(format_apr_metrics(result["summary"], title))
    print(f"wrote {paths['text']}, {paths['json']}, {paths['poses']}")
    return result["summary"]


def run_apr_batch_eval(args: argparse.Namespace) -> Dict:
    from . import viz
    from .train.apr import batch_evaluate, find_checkpoints, load_frames, set_cpu_threads

    set_cpu_threads(args.threads)
    checkpoints = find_checkpoints(args.checkpoints)
    first = Path(args.checkpoints[0])
    out_csv = Path(args.out or (first if first.is_dir() else first.parent) / f"batch_eval_{_apr_data_tag(args)}.csv")
    cache: Dict[tuple, object] = {}

    def data_for(options: Dict) -> object:
        key = tuple(options["scene_names"])
        if key not in cache:
            cache[key] = load_frames(args.scene, args.section, args.poselist, args.images, args.root,
                                     args.quaternion_frame, scene_names=list(key))
        return cache[key]

    rows = batch_evaluate(checkpoints, data_for, out_csv, args.device, args.batch_size, args.frames)
    figure = viz.figure_apr_batch_eval(rows, Path(args.figure) if args.figure else out_csv.with_suffix(".png"))
    print(f"evaluated {len(rows)} checkpoint(s); wrote {out_csv} and {figure}")
    return {"rows": rows, "csv": out_csv, "figure": figure}


def run_apr(args: argparse.Namespace) -> Dict:
    runners = {"train": run_apr_train, "test": run_apr_test, "batch-eval": run_apr_batch_eval}
    return runners[args.apr_command](args)


# =========================================================================== end of apr section


def readout_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="transpose readout", description="Fit the closed-form offset readout of an "
                                "already trained cluster network (what train_init --readout does after training).")
    _add_scene_args(p)
    p.add_argument("network", help="a cluster network's checkpoint (train_init --clusters K, train_e2e, TransPose)")
    p.add_argument("--section", default=None,
                   help="comma-separated sections to fit on (default: those the network was trained on)")
    p.add_argument("--out", default=None, help="write the network with its readout here (default: in place)")
    p.add_argument("--readout", type=_positive(int, "--readout"), default=4, metavar="PASSES",
                   help="passes over the frames, the first plain, the others with the training's augmentation "
                   "(default 4)")
    _add_readout_args(p)
    _add_section_weighting_arg(p, "the fit")
    p.add_argument("--seed", type=int, default=0)
    return p


def run_readout(args: argparse.Namespace) -> Dict:
    from .train.scr import readout_checkpoint

    return readout_checkpoint(args.network, args.scene, args.section, args.out, args.readout, args.readout_dim,
                              args.readout_ridge, args.seed, args.root, balance=args.section_weighting == "sections")


# --------------------------------------------------------------------------- dispatch

COMMANDS: Dict[str, tuple] = {
    "train_init": (train_init_parser, run_train_init),
    "train_e2e": (train_e2e_parser, run_train_e2e),
    "test": (test_parser, run_test),
    "visualize": (visualize_parser, run_visualize),
    "demo": (demo_parser, run_demo),
    "readout": (readout_parser, run_readout),
    "apr": (apr_parser, run_apr),  # APR section
}


def _run(command: str, argv: Optional[List[str]]) -> int:
    from .train.checkpoint import CheckpointError

    make_parser, run = COMMANDS[command]
    args = make_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError, CheckpointError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: Optional[List[str]] = None) -> None:
    """``transpose <command> [flags]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        names = ", ".join(COMMANDS)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command '{argv[0]}' (commands: {names})", file=sys.stderr)
            sys.exit(2)
        print(f"usage: transpose <command> [flags]\ncommands: {names}\n"
              f"'transpose <command> --help' lists a command's flags.")
        sys.exit(0)
    sys.exit(_run(argv[0], argv[1:]))


def train_init(argv: Optional[List[str]] = None) -> None:
    sys.exit(_run("train_init", argv))


def train_e2e(argv: Optional[List[str]] = None) -> None:
    sys.exit(_run("train_e2e", argv))


def test(argv: Optional[List[str]] = None) -> None:
    sys.exit(_run("test", argv))


def visualize(argv: Optional[List[str]] = None) -> None:
    sys.exit(_run("visualize", argv))


def demo(argv: Optional[List[str]] = None) -> None:
    sys.exit(_run("demo", argv))


def train_apr(argv: Optional[List[str]] = None) -> None:
    """``train_apr.py``: the flags of ``transpose apr train``."""
    sys.exit(_run("apr", ["train", *(sys.argv[1:] if argv is None else argv)]))
