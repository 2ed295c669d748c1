"""The data loaders of an RS.train run: the forget-side training batches, the validation batches and, for the
*_gdr / *_klr stages, an endless stream of retain batches drawn beside each training batch."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from RS.args import TrainArgs
from RS.datasets import collate
from RS.stages import Stage


@dataclass
class Loaders:
    """The run's loaders (prepared by accelerate once the model is); ``retain`` is None without a retain loss."""

    train: Any
    val: Any
    retain: Any = None

    _retain_iter: Iterator | None = None

    def next_retain(self) -> dict | None:
        """The retain batch that goes with the next training batch (cycling over the retain corpus), or None. The
        cycle starts at the first call: starting a DataLoader's iterator draws from its shuffle generator."""
        if self.retain is None:
            return None
        if self._retain_iter is None:
            self._retain_iter = itertools.cycle(self.retain)
        return next(self._retain_iter)


def make_loaders(args: TrainArgs, data, stage: Stage, pad: int) -> Loaders:
    """Train, validation and (stages with a retain loss) retain loaders; shuffles seeded by --seed (retain:
    --seed + 1)."""
    gen = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(data.train, batch_size=args.per_device_train_batch_size, shuffle=True, generator=gen,
                        collate_fn=lambda f: collate(f, pad))
    val_loader = DataLoader(data.val, batch_size=args.per_device_train_batch_size, collate_fn=lambda f: collate(f, pad))
    if not stage.retain:
        return Loaders(loader, val_loader)
    if not data.retain:
        raise ValueError(f"stage {stage.name} needs a retain corpus but none was built")
    retain = DataLoader(data.retain, batch_size=args.per_device_train_batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed + 1), collate_fn=lambda f: collate(f, pad))
    return Loaders(loader, val_loader, retain)

