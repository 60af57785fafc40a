"""Data-parallel training under ``torchrun``: process group, device, DDP wrapping, rank agreement.

A trainer needs no code of its own for this: :func:`transpose.train.loop.pick_device` and
:func:`transpose.train.loop.train_loop` call into this module. Launched as::

    torchrun --nproc_per_node 4 train_init.py scene out.net ...          # one machine, 4 GPUs
    torchrun --nnodes 2 --node_rank R --master_addr HOST --master_port P \
             --nproc_per_node 4 train_init.py scene out.net ...          # two machines

each process sees ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in its environment. With
``WORLD_SIZE > 1`` the first call of :func:`setup` (from ``pick_device``, else from the loop) joins
the process group once (``nccl`` for CUDA devices, ``gloo`` for CPU; ``TRANSPOSE_DIST_BACKEND``
overrides), pins the process to GPU ``LOCAL_RANK`` and registers the group's destruction at exit.
Without those variables (or with ``WORLD_SIZE=1``) everything here is a no-op and training is the
ordinary single process.

:class:`DistributedModel` wraps the trainer's network in ``DistributedDataParallel`` and routes the
network's own ``forward`` through the wrapper, because a trainer's ``step`` calls the network it
built (``net(image)``), not the wrapper; DDP therefore averages the gradients of every step without
the trainer knowing. Networks with BatchNorm (the APR backbones) get
``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` on CUDA when ``world_size > 1``, so the batch
statistics cover the effective batch; SyncBatchNorm has no CPU implementation, so on CPU (``gloo``)
each process keeps its own statistics. The SCR network uses GroupNorm, which needs neither.
"""
from __future__ import annotations

import atexit
import datetime
import os
from typing import Any, Dict, List, Optional, Sequence

import torch

BACKEND_ENV = "TRANSPOSE_DIST_BACKEND"
TIMEOUT_ENV = "TRANSPOSE_DIST_TIMEOUT_S"  # seconds a collective may wait (default 1800, torch's)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not launched by torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def env_rank() -> int:
    return _env_int("RANK", 0)


def env_local_rank() -> int:
    """GPU index of this process on its machine (``LOCAL_RANK``)."""
    return _env_int("LOCAL_RANK", 0)


def launched_distributed() -> bool:
    """True when the environment asks for more than one process (torchrun with N > 1)."""
    return env_world_size() > 1


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return torch.distributed.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group (1 without one)."""
    return torch.distributed.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 (or no process group): the one process that prints, logs and writes checkpoints."""
    return rank() == 0


def process_device(name: Optional[str] = None) -> torch.device:
    """The device this process trains on: ``name`` (default CUDA when available, else CPU).

    Under torchrun a bare ``cuda`` means GPU ``LOCAL_RANK`` (each process its own GPU); an explicit
    index (``cuda:1``) is kept.
    """
    device = torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and device.index is None and launched_distributed():
        device = torch.device("cuda", env_local_rank())
    return device


def _backend_for(device: torch.device) -> str:
    forced = os.environ.get(BACKEND_ENV)
    if forced:
        return forced
    return "nccl" if device.type == "cuda" else "gloo"


def setup(device: Optional[torch.device] = None) -> bool:
    """Join the process group once if torchrun asked for several processes; True when distributed.

    ``device`` chooses the backend (``nccl`` for CUDA, ``gloo`` otherwise) and, for CUDA, is made
    the current device before the group starts (NCCL binds to it). Calling again is a no-op.
    Raises RuntimeError naming the backend and the rendezvous address when the group cannot start.
    """
    if is_initialized():
        return world_size() > 1
    if not launched_distributed():
        return False
    n, r = env_world_size(), env_rank()
    device = torch.device(device) if device is not None else process_device()
    backend = _backend_for(device)
    where = f"MASTER_ADDR={os.environ.get('MASTER_ADDR')!r} MASTER_PORT={os.environ.get('MASTER_PORT')!r}"
    prefix = f"WORLD_SIZE={n} (rank {r}) asks for distributed training but the '{backend}' backend"
    if not torch.distributed.is_available():
        raise RuntimeError(f"{prefix} cannot start: this torch build has no torch.distributed")
    if backend == "nccl" and not (torch.cuda.is_available() and torch.distributed.is_nccl_available()):
        raise RuntimeError(f"{prefix} cannot start: NCCL needs CUDA GPUs and a torch build with NCCL "
                           f"(use --device cpu for gloo, or set {BACKEND_ENV}=gloo)")
    if backend == "gloo" and not torch.distributed.is_gloo_available():
        raise RuntimeError(f"{prefix} cannot start: this torch build has no gloo")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", env_local_rank())
        if device.index >= torch.cuda.device_count():
            raise RuntimeError(f"{prefix} cannot start: LOCAL_RANK {env_local_rank()} has no GPU "
                               f"({torch.cuda.device_count()} visible); use at most that many processes per node")
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 1800)))
    try:
        kwargs: Dict[str, Any] = {}
        if device.type == "cuda" and backend == "nccl":
            kwargs["device_id"] = device  # binds the communicator now instead of guessing later
        torch.distributed.init_process_group(backend=backend, init_method="env://", world_size=n, rank=r,
                                             timeout=timeout, **kwargs)
    except Exception as exc:
        raise RuntimeError(f"{prefix} could not initialise ({where}): {type(exc).__name__}: {exc}") from None
    atexit.register(cleanup)
    return True


def cleanup() -> None:
    """Destroy the process group (registered at exit by :func:`setup`; safe to call twice)."""
    if is_initialized():
        torch.distributed.destroy_process_group()


def _comm_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flags: Sequence[bool]) -> List[bool]:
    """Element-wise OR of boolean flags over all ranks (each rank must pass as many flags).

    The stop decisions (time budget, non-finite loss) go through here so that every rank leaves the
    loop at the same iteration; a rank that stopped alone would leave the others waiting forever
    in their next gradient all-reduce.
    """
    if world_size() == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags], dtype=torch.float32, device=_comm_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def all_gather(obj: Any) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a group."""
    if world_size() == 1:
        return [obj]
    out: List[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def mean_over_ranks(metrics: Dict[str, float]) -> Dict[str, float]:
    """Each scalar averaged over the ranks that report it (the logged loss is the effective batch's)."""
    if world_size() == 1:
        return dict(metrics)
    gathered = all_gather(dict(metrics))
    keys = list(metrics) + [k for g in gathered for k in g if k not in metrics]
    return {k: sum(g[k] for g in gathered if k in g) / sum(1 for g in gathered if k in g) for k in keys}


def barrier() -> None:
    if world_size() > 1:
        if torch.distributed.get_backend() == "nccl":
            torch.distributed.barrier(device_ids=[torch.cuda.current_device()])
        else:
            torch.distributed.barrier()


def _has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class DistributedModel:
    """``model`` wrapped in DistributedDataParallel, with ``model(...)`` itself routed through the wrapper.

    The trainer keeps calling its own network; while this object is open that call enters DDP,
    which averages gradients over ranks during ``backward``. If a step never calls the network's
    ``forward`` (e.g. only submodules or other methods), DDP cannot see the step, so
    :meth:`after_backward` averages the gradients itself (one all-reduce per dtype) instead: the
    result is the same, only without overlapping communication and backward. That choice is made
    from the step's own code path, which is the same on every rank. :meth:`close` restores the
    plain network (the process group may be gone when the caller uses it next).

    Args:
        model: the trainer's network, already on its device (CUDA: this process's GPU).
        find_unused_parameters: DDP's flag: True (default) allows steps that leave some parameters
            without gradient (they keep ``grad=None`` on every rank, as in one process).
    """

    def __init__(self, model: torch.nn.Module, find_unused_parameters: bool = True):
        import warnings

        from torch.nn.parallel import DistributedDataParallel

        # DDP warns once per process when the flag finds nothing unused; for a shared loop that is expected
        warnings.filterwarnings("ignore", message=r"find_unused_parameters=True was specified")

        self.module = model
        device = _model_device(model)
        self.sync_batchnorm = False
        if _has_batchnorm(model) and device.type == "cuda":
            converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            if converted is not model:  # only when the root itself is a BatchNorm layer
                raise ValueError("distributed training: the network itself is a BatchNorm layer; wrap it in a module")
            self.sync_batchnorm = True
        # DDP broadcasts rank 0's parameters and buffers here: every rank starts from the same weights.
        self.ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                           find_unused_parameters=find_unused_parameters)
        self.forward_calls = 0
        self._inside = False
        self._noted_bypass = False
        self._had_own_forward = "forward" in model.__dict__
        self._own_forward = model.__dict__.get("forward")
        inner = model.forward

        def routed_forward(*args: Any, **kwargs: Any) -> Any:
            if self._inside:  # DDP calling the module back: run the real forward
                return inner(*args, **kwargs)
            self._inside = True
            try:
                self.forward_calls += 1
                return self.ddp(*args, **kwargs)
            finally:
                self._inside = False

        model.forward = routed_forward

    def before_step(self) -> None:
        self.forward_calls = 0

    def after_backward(self) -> None:
        """Average the gradients by hand when the step bypassed DDP (see the class docstring)."""
        if self.forward_calls == 0 and torch.is_grad_enabled():
            if not self._noted_bypass and is_main_process():
                print("note: the step does not call the model given to train_loop (only its parts), so "
                      "gradients are averaged after backward instead of during it")
            self._noted_bypass = True
            average_gradients(self.module.parameters())

    def close(self) -> None:
        if self._had_own_forward:
            self.module.forward = self._own_forward
        else:
            self.module.__dict__.pop("forward", None)


def average_gradients(parameters) -> None:
    """Replace each parameter's gradient by its mean over ranks (None where no rank has one).

    Flattens the gradients per (device, dtype) so each group is one all-reduce.
    """
    n = world_size()
    if n == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    has = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], dtype=torch.float32, device=_comm_device())
    torch.distributed.all_reduce(has)
    groups: Dict[Any, List[torch.nn.Parameter]] = {}
    for p, h in zip(params, has.tolist()):
        if h > 0:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            groups.setdefault((p.device, p.dtype), []).append(p)
    for key in sorted(groups, key=str):  # the same order on every rank
        group = groups[key]
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        if flat.device.type != _comm_device().type:
            flat = flat.to(_comm_device())
        torch.distributed.all_reduce(flat)
        flat /= n
        offset = 0
        for p in group:
            k = p.grad.numel()
            p.grad.copy_(flat[offset:offset + k].view_as(p.grad))
            offset += k


def warn_batchnorm_on_cpu(model: torch.nn.Module) -> Optional[str]:
    """A note for rank 0 when BatchNorm statistics cannot be synchronised (CPU)."""
    if world_size() > 1 and _has_batchnorm(model) and _model_device(model).type != "cuda":
        return ("note: BatchNorm statistics stay per process on CPU (SyncBatchNorm needs CUDA); "
                "gradients are still averaged")
    return None


__all__ = ["env_world_size", "env_rank", "env_local_rank", "launched_distributed", "is_initialized", "rank",
           "world_size", "is_main_process", "process_device", "setup", "cleanup", "any_rank", "all_gather",
           "mean_over_ranks", "barrier", "DistributedModel", "average_gradients", "warn_batchnorm_on_cpu"]
