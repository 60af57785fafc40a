"""Training: the shared loop (checkpoints, logs, progress, resume) and the trainers built on it."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .loop import LoopConfig, pick_device, seed_everything, train_loop

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "LoopConfig", "pick_device",
           "seed_everything", "train_loop"]
