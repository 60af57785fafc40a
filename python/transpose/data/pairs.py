"""Contrastive batches for sim-to-real training (TransPose-NCE): anchor, positives and negatives.

:class:`ContrastiveGroups` is an indexable dataset over *anchors* (frames with at least one mined
positive, see :mod:`transpose.data.overlap`); item ``n`` is a *group*: the anchor, up to
``pos_same`` in-domain and ``pos_cross`` cross-domain positives, and up to ``negatives`` negatives
(drawn from both domains' lists), each a :class:`~transpose.data.scene.SceneDataset` item. The
draws use torch's global RNG, so the training loop's seed (and DataLoader worker seeding) makes
them reproducible.

:class:`ContrastiveCollate` flattens a list of groups into one batch of ``M`` frames with the
usual keys (``image``, ``pose``, ``K``, ``coords``, ``mask``, ...) plus

- ``frame (M,)``: index of each frame in the mining (``section/key`` order),
- ``group (M,)``, ``role (M,)`` (0 anchor, 1 positive, 2 negative), ``domain (M,)`` (the mining's
  domain id of each frame, e.g. sim 0 / real 1),
- ``positive_mask (M, M)`` bool: i and j are positives when they are anchor/positives of one group,
  a mined positive pair, or the same frame drawn twice (two augmentations of one view). Everything
  else in the batch is a negative for SupCon.

All frames must have the same image size (build the section datasets with ``output_size``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .overlap import PairMining

__all__ = ["ContrastiveGroups", "ContrastiveCollate", "ROLE_ANCHOR", "ROLE_POSITIVE", "ROLE_NEGATIVE"]

ROLE_ANCHOR, ROLE_POSITIVE, ROLE_NEGATIVE = 0, 1, 2


def _draw(candidates: np.ndarray, k: int) -> List[int]:
    """Up to ``k`` distinct entries of ``candidates``, at random (torch's RNG)."""
    if k <= 0 or candidates.size == 0:
        return []
    pick = torch.randperm(candidates.size)[:k].numpy()
    return candidates[pick].tolist()


class ContrastiveGroups(Dataset):
    """Groups (anchor + positives + negatives) over the frames of several section datasets.

    Args:
        datasets: one :class:`SceneDataset` per section, in the order the mining was computed on
            (frame k of the mining is frame k of the datasets concatenated).
        mining: the mined lists (:func:`transpose.data.overlap.mine_scene`).
        pos_same, pos_cross, negatives: how many of each to draw per group (fewer when a list is short).
        cross_anchors_only: use only anchors that have a cross-domain positive.
        anchor_repeats: per dataset, how many times each of its anchors is listed (an epoch draws
            it that often), e.g. :func:`~transpose.data.scene.section_repeats` to balance sections.

    Raises:
        ValueError when the datasets' frames do not match the mining's names, or no anchor has a positive.
    """

    def __init__(self, datasets: Sequence[Dataset], mining: PairMining, pos_same: int = 1, pos_cross: int = 1,
                 negatives: int = 2, cross_anchors_only: bool = False,
                 anchor_repeats: Optional[Sequence[int]] = None):
        names = [f"{ds.section}/{key}" for ds in datasets for key in ds.frames]
        if names != list(mining.names):
            first = next((i for i, (a, b) in enumerate(zip(names, mining.names)) if a != b), min(len(names), len(mining)))
            raise ValueError(f"the datasets' {len(names)} frames do not match the mining's {len(mining)} "
                             f"(first difference at {first}); recompute the mining for these sections")
        self.datasets = list(datasets)
        self.offsets = np.cumsum([0] + [len(ds) for ds in datasets])
        self.mining = mining
        self.pos_same, self.pos_cross, self.negatives = int(pos_same), int(pos_cross), int(negatives)
        self.anchors = mining.anchors(cross=cross_anchors_only)
        if self.anchors.size == 0:
            raise ValueError("no frame has a mined positive: loosen pos_forward / pos_backward or add frames")
        if anchor_repeats is not None:
            if len(anchor_repeats) != len(self.datasets) or min(anchor_repeats) < 1:
                raise ValueError(f"anchor_repeats: need one count >= 1 per dataset ({len(self.datasets)}), "
                                 f"got {list(anchor_repeats)}")
            owner = np.searchsorted(self.offsets, self.anchors, side="right") - 1
            self.anchors = np.repeat(self.anchors, np.asarray(anchor_repeats, dtype=np.int64)[owner])

    def __len__(self) -> int:
        return int(self.anchors.size)

    def frame_item(self, frame: int) -> Dict[str, Any]:
        d = int(np.searchsorted(self.offsets, frame, side="right") - 1)
        return self.datasets[d][int(frame - self.offsets[d])]

    def group(self, index: int) -> List[tuple]:
        """``[(frame, role), ...]`` of group ``index`` (draws positives and negatives)."""
        anchor = int(self.anchors[index])
        m = self.mining
        pos = _draw(m.get("pos_same", anchor), self.pos_same) + _draw(m.get("pos_cross", anchor), self.pos_cross)
        neg = _draw(m.negatives(anchor), self.negatives)
        return [(anchor, ROLE_ANCHOR)] + [(f, ROLE_POSITIVE) for f in pos] + [(f, ROLE_NEGATIVE) for f in neg]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        members = self.group(index)
        return {"frames": [f for f, _ in members], "roles": [r for _, r in members],
                "items": [self.frame_item(f) for f, _ in members]}


class ContrastiveCollate:
    """Collate groups from :class:`ContrastiveGroups` into one flat batch with a positive mask."""

    def __init__(self, mining: PairMining):
        self.positive = torch.from_numpy(mining.positive_matrix())
        self.domains = torch.as_tensor(np.asarray(mining.domains), dtype=torch.long)

    def __call__(self, groups: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        items = [it for g in groups for it in g["items"]]
        frame = torch.tensor([f for g in groups for f in g["frames"]], dtype=torch.long)
        role = torch.tensor([r for g in groups for r in g["roles"]], dtype=torch.long)
        group = torch.tensor([k for k, g in enumerate(groups) for _ in g["frames"]], dtype=torch.long)
        shapes = {tuple(it["image"].shape) for it in items}
        if len(shapes) != 1:
            raise ValueError(f"contrastive batches need one image size, got {sorted(shapes)} "
                             f"(build the section datasets with output_size)")
        batch: Dict[str, Any] = {}
        common = [k for k in items[0] if all(k in it for it in items)]  # e.g. depth only where a section has it
        for key in common:
            values = [it[key] for it in items]
            if torch.is_tensor(values[0]) and all(torch.is_tensor(v) for v in values):
                batch[key] = torch.stack(values)
            else:
                batch[key] = values
        in_group = (group[:, None] == group[None, :]) & (role[:, None] != ROLE_NEGATIVE) & (role[None, :] != ROLE_NEGATIVE)
        same_frame = frame[:, None] == frame[None, :]
        batch["positive_mask"] = in_group | same_frame | self.positive[frame][:, frame]
        batch["frame"], batch["role"], batch["group"] = frame, role, group
        batch["domain"] = self.domains[frame]
        return batch
