"""The one training loop every trainer shares: batches, steps, logs, progress, checkpoints, resume.

A trainer (SCR init, end-to-end, APR, ...) supplies the model, optimizer, an indexable dataset and a
``step(batch, iteration) -> {"loss": tensor, other scalar metrics}``; the loop does the rest:

- deterministic batch order (a permutation per epoch from the seed), so that ``--resume`` continues
  exactly where the last checkpoint left off, bit for bit;
- a checkpoint (weights, options, optimizer, scheduler, RNG states, iteration) written atomically
  every ``checkpoint_every`` iterations and at the end, to the output file itself;
- ``log.csv`` and TensorBoard events, a tqdm bar with the loss and iterations per second;
- an optional wall-clock budget (``max_minutes``) after which it stops cleanly and saves.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .logger import MetricLogger


@dataclass
class LoopConfig:
    """What the loop needs besides the model, optimizer, data and step function."""

    out: Path                       # checkpoint written here (and resumed from)
    kind: str                       # checkpoint kind ("scr", "apr", ...)
    options: Dict[str, Any]         # stored in the checkpoint: everything needed to rebuild the model
    iterations: int
    batch_size: int = 1
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 10
    logdir: Optional[Path] = None   # default: <out without suffix>_log/
    resume: bool = False
    max_minutes: Optional[float] = None
    num_workers: int = 0
    progress: bool = True
    collate_fn: Optional[Callable] = None

    def resolved_logdir(self) -> Path:
        return Path(self.logdir) if self.logdir else Path(str(Path(self.out).with_suffix("")) + "_log")


class ResumableSampler(Sampler):
    """Indices in a seeded permutation per epoch, sharded across ranks, starting at any offset.

    The permutation of epoch ``e`` depends only on ``(seed, e)``, so a resumed run draws the same
    samples as an uninterrupted one.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        return int(math.ceil(self.n / self.world_size))

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        total = self.per_rank() * self.world_size
        perm += perm[: total - len(perm)]  # pad so every rank gets the same count
        mine = perm[self.rank:total:self.world_size]
        return iter(mine[self.start:])

    def __len__(self) -> int:
        return self.per_rank() - self.start


def _rank_world() -> tuple:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _batches(dataset: Dataset, cfg: LoopConfig, start_iteration: int, rank: int, world: int) -> Iterator[Any]:
    """Endless batches; skips the first ``start_iteration`` batches without loading them."""
    sampler = ResumableSampler(len(dataset), cfg.seed, rank, world)
    per_epoch = max(1, sampler.per_rank() // cfg.batch_size)
    epoch, offset = divmod(start_iteration, per_epoch)
    while True:
        sampler.set_epoch(epoch, offset * cfg.batch_size)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                            num_workers=cfg.num_workers, collate_fn=cfg.collate_fn,
                            persistent_workers=False,
                            generator=torch.Generator().manual_seed(cfg.seed + epoch))
        yield from loader
        epoch, offset = epoch + 1, 0


def train_loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer, dataset: Dataset,
               step: Callable[[Any, int], Dict[str, torch.Tensor]], cfg: LoopConfig,
               scheduler: Optional[Any] = None) -> Dict[str, Any]:
    """Run ``cfg.iterations`` optimisation steps; return a summary (iterations done, time, last metrics).

    ``step`` computes the loss of one batch (and any scalar metrics to log); the loop does the
    backward pass, the optimizer and scheduler steps, logging and checkpoints.
    """
    rank, world = _rank_world()
    out = Path(cfg.out)
    start = 0
    if cfg.resume and out.is_file():
        ckpt = load_checkpoint(out, cfg.kind)
        module = model.module if hasattr(model, "module") else model
        module.load_state_dict(ckpt["model"])
        training = ckpt.get("training")
        if not training:
            raise ValueError(f"{out}: holds no training state to resume from")
        optimizer.load_state_dict(training["optimizer"])
        if scheduler is not None and training.get("scheduler") is not None:
            scheduler.load_state_dict(training["scheduler"])
        set_rng_state(training["rng"])
        start = int(ckpt["iteration"])
        if rank == 0:
            print(f"resuming {out} from iteration {start}")
    elif cfg.resume and rank == 0:
        print(f"--resume: {out} does not exist yet, starting from iteration 0")
    if start >= cfg.iterations:
        return {"iterations": start, "seconds": 0.0, "metrics": {}, "resumed_from": start}

    def checkpoint(iteration: int) -> None:
        if rank != 0:
            return
        save_checkpoint(out, kind=cfg.kind, model=model, options=cfg.options, iteration=iteration,
                        training={"optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict() if scheduler is not None else None,
                                  "rng": rng_state()})

    logger = MetricLogger(cfg.resolved_logdir(), start_iteration=start) if rank == 0 else None
    bar = None
    if cfg.progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=cfg.iterations, initial=start, desc=f"train {cfg.kind}", unit="it",
                   dynamic_ncols=True, mininterval=1.0)
    t0 = time.time()
    iteration = start
    last: Dict[str, float] = {}
    window: List[Dict[str, float]] = []
    model.train()
    try:
        for batch in _batches(dataset, cfg, start, rank, world):
            metrics = step(batch, iteration)
            loss = metrics["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at iteration {iteration + 1}; "
                                         f"lower the learning rate or resume from {out}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            iteration += 1
            window.append({k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in metrics.items()})
            if iteration % cfg.log_every == 0 or iteration == cfg.iterations:
                last = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                last["lr"] = optimizer.param_groups[0]["lr"]
                elapsed = time.time() - t0
                last["it_per_s"] = (iteration - start) / max(elapsed, 1e-9)
                if logger is not None:
                    logger.log(iteration, last)
                if bar is not None:
                    bar.set_postfix(loss=f"{last['loss']:.4g}", refresh=False)
                window = []
            if bar is not None:
                bar.update(1)
            out_of_time = cfg.max_minutes is not None and time.time() - t0 > 60.0 * cfg.max_minutes
            if iteration % cfg.checkpoint_every == 0 or iteration >= cfg.iterations or out_of_time:
                checkpoint(iteration)
            if iteration >= cfg.iterations or out_of_time:
                break
    except KeyboardInterrupt:
        checkpoint(iteration)
        if rank == 0:
            print(f"\ninterrupted: checkpoint at iteration {iteration} saved to {out}; continue with --resume")
        raise
    finally:
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
    return {"iterations": iteration, "seconds": time.time() - t0, "metrics": last, "resumed_from": start}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: Optional[str] = None) -> torch.device:
    """``name`` if given, else CUDA when available, else CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


__all__ = ["LoopConfig", "ResumableSampler", "train_loop", "seed_everything", "pick_device"]
