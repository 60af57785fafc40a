"""The one training loop every trainer shares: batches, steps, logs, progress, checkpoints, resume.

A trainer (SCR init, end-to-end, APR, ...) supplies the model, optimizer, an indexable dataset and a
``step(batch, iteration) -> {"loss": tensor, other scalar metrics}``; the loop does the rest:

- deterministic batch order (a permutation per epoch from the seed), so that ``--resume`` continues
  exactly where the last checkpoint left off, bit for bit;
- a checkpoint (weights, options, optimizer, scheduler, RNG states, iteration) written atomically
  every ``checkpoint_every`` iterations and at the end, to the output file itself;
- ``log.csv`` and TensorBoard events, a tqdm bar with the loss and iterations per second;
- an optional wall-clock budget (``max_minutes``) after which it stops cleanly and saves;
- data-parallel training when launched by ``torchrun --nproc_per_node N`` (see ``train_loop``).
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from . import distributed
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
    # DDP's flag. True lets a step leave parameters without gradient (SCRNet's sigma head in mode 0,
    # an unused output) at the cost of one autograd-graph walk per forward; False is a little faster
    # but DDP then fails at the second step when any parameter got no gradient.
    find_unused_parameters: bool = True
    # learning-rate factor as a function of progress in [0, 1], where progress is the larger of
    # the share of iterations done and the share of max_minutes used: a time-budgeted run still
    # warms up and anneals fully (an iteration-based schedule would be cut off mid-way)
    lr_schedule: Optional[Callable[[float], float]] = None

    @classmethod
    def from_settings(cls, settings: Any, *, kind: str, options: Dict[str, Any], iterations: Optional[int] = None,
                      batch_size: Optional[int] = None, **extra: Any) -> "LoopConfig":
        """The loop settings of a trainer's config object (``InitConfig``, ``E2EConfig``, ...), which
        carries the flags every training command shares: ``out``, ``iterations``, ``batch_size``,
        ``seed``, ``checkpoint_every``, ``log_every``, ``logdir``, ``resume``, ``max_minutes``,
        ``num_workers``, ``progress``."""
        logdir = getattr(settings, "logdir", None)
        return cls(out=Path(settings.out), kind=kind, options=options,
                   iterations=int(iterations if iterations is not None else settings.iterations),
                   batch_size=int(batch_size if batch_size is not None else getattr(settings, "batch_size", 1)),
                   seed=settings.seed, checkpoint_every=settings.checkpoint_every, log_every=settings.log_every,
                   logdir=Path(logdir) if logdir else None, resume=settings.resume,
                   max_minutes=settings.max_minutes, num_workers=settings.num_workers,
                   progress=settings.progress, **extra)

    def resolved_logdir(self) -> Path:
        return Path(self.logdir) if self.logdir else Path(str(Path(self.out).with_suffix("")) + "_log")


class ResumableSampler(Sampler):
    """Indices in a seeded permutation per epoch, sharded across ranks, starting at any offset.

    The permutation of epoch ``e`` depends only on ``(seed, e)``, so a resumed run draws the same
    samples as an uninterrupted one. Rank ``r`` of ``world_size`` W takes the items at positions
    r, r+W, r+2W, ... of that permutation (padded by wrapping so every rank gets as many), which
    makes W ranks with batch B see exactly the batches of one process with batch B*W (see ``_batches``).
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
    return distributed.rank(), distributed.world_size()


# Rank r > 0 reseeds its RNGs with seed + _RANK_STRIDE * r (augmentation, dropout and loader workers
# then differ between ranks); rank 0 keeps the trainer's stream, so one process is unchanged.
_RANK_STRIDE = 1_000_003


def _steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    return n // (batch_size * world)


def _batches(dataset: Dataset, cfg: LoopConfig, start_iteration: int, rank: int, world: int) -> Iterator[Any]:
    """Endless batches; skips the first ``start_iteration`` batches without loading them.

    Why W processes with batch B train exactly like one process with batch B*W: epoch ``e`` draws
    one permutation P of the n samples from ``(seed, e)`` alone, the same on every rank. Rank r
    takes P[r], P[r+W], P[r+2W], ... (:class:`ResumableSampler`) and cuts that list into
    consecutive batches of B, so its batch k is {P[(kB+j)W + r] : j < B} and the union of batch k
    over the ranks is P[kBW : (k+1)BW], which is batch k of the single process. An epoch is
    n // (BW) steps on every rank (the rest of P is dropped, like the single process's drop_last).
    With a step whose loss is the batch mean, DDP's average of the W per-rank gradients is then the
    single process's gradient.
    """
    sampler = ResumableSampler(len(dataset), cfg.seed, rank, world)
    per_epoch = _steps_per_epoch(len(dataset), cfg.batch_size, world)
    epoch, offset = divmod(start_iteration, per_epoch)
    loader = None
    while True:
        sampler.set_epoch(epoch, offset * cfg.batch_size)
        if loader is None or not cfg.num_workers:
            # Worker processes live as long as the run (persistent_workers): what a worker's dataset
            # holds, e.g. SceneDataset's frame cache, carries over from one epoch to the next. The
            # sampler is read in this process, so set_epoch still orders every epoch.
            loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                                num_workers=cfg.num_workers, collate_fn=cfg.collate_fn,
                                persistent_workers=cfg.num_workers > 0,
                                generator=torch.Generator().manual_seed(cfg.seed + epoch + _RANK_STRIDE * rank))
        yield from itertools.islice(loader, per_epoch - offset)
        epoch, offset = epoch + 1, 0


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def train_loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer, dataset: Dataset,
               step: Callable[[Any, int], Dict[str, torch.Tensor]], cfg: LoopConfig,
               scheduler: Optional[Any] = None) -> Dict[str, Any]:
    """Run ``cfg.iterations`` optimisation steps; return a summary (iterations done, time, last metrics).

    ``step`` computes the loss of one batch (and any scalar metrics to log); the loop does the
    backward pass, the optimizer and scheduler steps, logging and checkpoints.

    Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE > 1``) the same call trains data-parallel
    (see :mod:`transpose.train.distributed`): the process group is joined if the trainer has not
    done so (``pick_device``), each rank reads the checkpoint to resume from, ``model`` is wrapped
    in DistributedDataParallel (its own ``forward`` routed through it, so ``step`` is unchanged;
    BatchNorm becomes SyncBatchNorm on CUDA), each rank gets its shard of every global batch
    (``cfg.batch_size`` per rank, effective batch ``batch_size * N``), stop decisions (time budget,
    non-finite loss) are agreed by all ranks, logged metrics are averaged over ranks, and only
    rank 0 shows progress, logs and writes the checkpoint (which also keeps every rank's RNG state).
    The summary reports ``world_size`` and ``effective_batch``.
    """
    distributed.setup(_model_device(model))  # no-op unless torchrun asked for several processes
    rank, world = _rank_world()
    n = len(dataset)
    if _steps_per_epoch(n, cfg.batch_size, world) == 0:
        raise ValueError(f"batch_size {cfg.batch_size} x {world} process(es) = {cfg.batch_size * world} "
                         f"exceeds the {n} samples of the dataset")
    out = Path(cfg.out)
    module = model.module if hasattr(model, "module") else model
    start = 0
    elapsed_before = 0.0  # seconds spent by earlier runs of a resumed training (time budget)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    if cfg.resume and out.is_file():
        ckpt = load_checkpoint(out, cfg.kind)  # every rank reads it, onto the CPU (map_location)
        module.load_state_dict(ckpt["model"])
        training = ckpt.get("training")
        if not training:
            raise ValueError(f"{out}: holds no training state to resume from")
        optimizer.load_state_dict(training["optimizer"])
        if scheduler is not None and training.get("scheduler") is not None:
            total = getattr(scheduler, "total_steps", None)
            scheduler.load_state_dict(training["scheduler"])
            if total is not None and scheduler.total_steps != total:
                # resumed with a different --iterations: keep the position, stretch the schedule
                if rank == 0:
                    print(f"learning-rate schedule stretched from {scheduler.total_steps} to {total} iterations")
                scheduler.total_steps = total
        start = int(ckpt["iteration"])
        elapsed_before = float(training.get("elapsed", 0.0))
        per_rank = training.get("rng_per_rank")
        if per_rank and len(per_rank) == world:
            set_rng_state(per_rank[rank])
        else:  # saved by another number of processes: rank 0's stream, the others derived from it
            set_rng_state(training["rng"])
            if rank > 0:
                seed_everything(cfg.seed + _RANK_STRIDE * rank + start)
        if rank == 0:
            print(f"resuming {out} from iteration {start}")
    else:
        if cfg.resume and rank == 0:
            print(f"--resume: {out} does not exist yet, starting from iteration 0")
        if rank > 0:
            seed_everything(cfg.seed + _RANK_STRIDE * rank)
    if world > 1:
        starts = distributed.all_gather(start)
        if len(set(starts)) > 1:
            raise ValueError(f"{out}: the ranks would resume from different iterations {starts}; "
                             f"every node must see the same checkpoint file")
    if start >= cfg.iterations:
        return {"iterations": start, "seconds": 0.0, "metrics": {}, "resumed_from": start,
                "world_size": world, "effective_batch": cfg.batch_size * world}

    def checkpoint(iteration: int, all_ranks: bool = True) -> None:
        # all_ranks: every rank is here at the same iteration, so their RNG states can be gathered
        rngs = distributed.all_gather(rng_state()) if world > 1 and all_ranks else None
        if rank != 0:
            return
        training = {"optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "rng": rng_state(), "elapsed": elapsed_before + time.time() - t0}
        if world > 1:
            training.update(rng_per_rank=rngs, world_size=world, effective_batch=cfg.batch_size * world)
        save_checkpoint(out, kind=cfg.kind, model=module, options=cfg.options, iteration=iteration,
                        training=training)

    wrapped = None
    if world > 1 and not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        wrapped = distributed.DistributedModel(module, find_unused_parameters=cfg.find_unused_parameters)
    if world > 1 and rank == 0:
        print(f"distributed: {world} processes ({torch.distributed.get_backend()}), batch {cfg.batch_size} "
              f"per process = effective batch {cfg.batch_size * world}"
              + (", SyncBatchNorm" if wrapped is not None and wrapped.sync_batchnorm else ""))
        note = distributed.warn_batchnorm_on_cpu(module)
        if note:
            print(note)
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
            if wrapped is not None:
                wrapped.before_step()
            metrics = step(batch, iteration)
            loss = metrics["loss"]
            finite = bool(torch.isfinite(loss))
            used = elapsed_before + time.time() - t0
            out_of_time = cfg.max_minutes is not None and used > 60.0 * cfg.max_minutes
            # one collective per step: every rank raises, or stops after this step, together
            any_nonfinite, out_of_time = distributed.any_rank([not finite, out_of_time])
            if any_nonfinite:
                what = f"loss became {loss.item()}" if not finite else "loss became non-finite on another rank"
                raise FloatingPointError(f"{what} at iteration {iteration + 1}; "
                                         f"lower the learning rate or resume from {out}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if wrapped is not None:
                wrapped.after_backward()
            if cfg.lr_schedule is not None:
                progress = iteration / cfg.iterations
                if cfg.max_minutes:
                    progress = max(progress, used / (60.0 * cfg.max_minutes))
                factor = cfg.lr_schedule(min(progress, 1.0))
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * factor
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
                last = distributed.mean_over_ranks(last)  # the effective batch's metrics
                if logger is not None:
                    logger.log(iteration, last)
                if bar is not None:
                    bar.set_postfix(loss=f"{last['loss']:.4g}", refresh=False)
                window = []
            if bar is not None:
                bar.update(1)
            if iteration % cfg.checkpoint_every == 0 or iteration >= cfg.iterations or out_of_time:
                checkpoint(iteration)
            if iteration >= cfg.iterations or out_of_time:
                break
    except KeyboardInterrupt:
        # Ctrl-C reaches the ranks at different points: no collective here, rank 0 saves alone
        checkpoint(iteration, all_ranks=False)
        if rank == 0:
            print(f"\ninterrupted: checkpoint at iteration {iteration} saved to {out}; continue with --resume")
        raise
    finally:
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
        if wrapped is not None:
            wrapped.close()
    distributed.barrier()  # the checkpoint is on disk before any rank returns
    return {"iterations": iteration, "seconds": time.time() - t0, "metrics": last, "resumed_from": start,
            "world_size": world, "effective_batch": cfg.batch_size * world}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: Optional[str] = None) -> torch.device:
    """``name`` if given, else CUDA when available, else CPU.

    Under torchrun with several processes this also joins the process group (once) and gives each
    process its own GPU: a bare ``cuda`` becomes ``cuda:LOCAL_RANK``.
    """
    device = distributed.process_device(name)
    distributed.setup(device)
    return device


def make_adam(params, **kwargs) -> torch.optim.Adam:
    """``torch.optim.Adam(params, **kwargs)``, fused into one kernel where this torch supports it for
    the parameters' device (CPU since torch 2.4): 1.7 ms instead of 11.6 ms a step for the demo's
    2M-parameter network, a tenth of a CPU training step."""
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device / dtype without the fused kernel
        return torch.optim.Adam(params, **kwargs)


__all__ = ["LoopConfig", "ResumableSampler", "train_loop", "seed_everything", "pick_device", "make_adam"]
