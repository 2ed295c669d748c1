"""``DataProto``: the batch that flows between the trainer and its workers.

A batch of B rows holds three things:

- ``batch``: ``dict[str, torch.Tensor]``, every tensor with first dimension B (``input_ids [B, L]``,
  ``responses [B, T]``, ``token_level_scores [B, T]`` ...);
- ``non_tensor_batch``: ``dict[str, np.ndarray]`` of ``dtype=object`` and length B (prompt strings, solutions,
  group uids ...);
- ``meta_info``: a free-form ``dict`` shared by the whole batch (temperature, step, metrics ...).

Every row operation (indexing, ``repeat``, ``reorder``, ``chunk``/``split``/``concat``) is applied to ``batch`` and
``non_tensor_batch`` together so rows stay aligned; ``meta_info`` is carried along unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Index = int | slice | list | np.ndarray | torch.Tensor


def to_object_array(values: Any) -> np.ndarray:
    """A 1-D object array from a list/array (keeps lists and dicts as single elements)."""
    if isinstance(values, np.ndarray) and values.dtype == object and values.ndim == 1:
        return values
    values = list(values)
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):  # element-wise so list-valued cells are not broadcast into a 2-D array
        out[i] = v
    return out


def _index_to_numpy(idx: Index, length: int) -> np.ndarray | slice:
    """Normalise an index to a slice or a 1-D int64 numpy array (bool masks become positions)."""
    if isinstance(idx, slice):
        return idx
    if isinstance(idx, torch.Tensor):
        idx = idx.detach().cpu().numpy()
    arr = np.asarray(idx)
    if arr.dtype == bool:
        if arr.shape != (length,):
            raise IndexError(f"boolean mask has shape {arr.shape}, expected ({length},)")
        return np.nonzero(arr)[0]
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        raise IndexError(f"index must be an int, slice, or 1-D integer/bool sequence, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


@dataclass
class DataProto:
    """A batch of B aligned rows: tensors, object arrays, and batch-level meta information."""

    batch: dict[str, torch.Tensor] = field(default_factory=dict)
    """Tensors whose first dimension is the batch size B."""
    non_tensor_batch: dict[str, np.ndarray] = field(default_factory=dict)
    """Object arrays of length B (strings, lists, dicts per row)."""
    meta_info: dict = field(default_factory=dict)
    """Batch-level information, not indexed by row."""

    def __post_init__(self) -> None:
        self.non_tensor_batch = {k: to_object_array(v) for k, v in self.non_tensor_batch.items()}
        self.check_consistency()

    # ------------------------------------------------------------------ construction / checks
    @classmethod
    def from_dict(
        cls,
        tensors: dict[str, torch.Tensor] | None = None,
        non_tensors: dict[str, Any] | None = None,
        meta_info: dict | None = None,
    ) -> DataProto:
        """Build a batch; non-tensor values (lists, arrays) become object arrays. Raises if lengths differ."""
        tensors = dict(tensors or {})
        for k, v in tensors.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"tensors[{k!r}] is a {type(v).__name__}; put non-tensor data in non_tensors")
        return cls(batch=tensors, non_tensor_batch=dict(non_tensors or {}), meta_info=dict(meta_info or {}))

    def check_consistency(self) -> None:
        """Raise ``ValueError`` unless every tensor and object array has the same first dimension."""
        lengths = {}
        for k, v in self.batch.items():
            if v.dim() == 0:
                raise ValueError(f"batch[{k!r}] is a 0-d tensor; batch tensors need a first (row) dimension")
            lengths[f"batch[{k!r}]"] = v.shape[0]
        for k, v in self.non_tensor_batch.items():
            lengths[f"non_tensor_batch[{k!r}]"] = len(v)
        if len(set(lengths.values())) > 1:
            raise ValueError(f"DataProto fields have different lengths: {lengths}")

    def __len__(self) -> int:
        for v in self.batch.values():
            return v.shape[0]
        for v in self.non_tensor_batch.values():
            return len(v)
        return 0

    def __repr__(self) -> str:
        tensors = {k: tuple(v.shape) for k, v in self.batch.items()}
        return (f"DataProto(len={len(self)}, batch={tensors}, non_tensor_keys={list(self.non_tensor_batch)}, "
                f"meta_keys={list(self.meta_info)})")

    # ------------------------------------------------------------------ row selection
    def __getitem__(self, idx: Index) -> DataProto:
        """Rows by int (kept as a batch of 1), slice, list/array/tensor of positions, or a bool mask."""
        if isinstance(idx, (int, np.integer)):
            n = len(self)
            if not -n <= idx < n:
                raise IndexError(f"row {idx} out of range for a batch of {n}")
            idx = slice(int(idx), int(idx) + 1 if idx != -1 else None)
        norm = _index_to_numpy(idx, len(self))
        if isinstance(norm, slice):
            batch = {k: v[norm] for k, v in self.batch.items()}
            non_tensor = {k: v[norm] for k, v in self.non_tensor_batch.items()}
        else:
            batch = {k: v[torch.as_tensor(norm, device=v.device)] for k, v in self.batch.items()}
            non_tensor = {k: v[norm] for k, v in self.non_tensor_batch.items()}
        return DataProto(batch=batch, non_tensor_batch=non_tensor, meta_info=dict(self.meta_info))

    def reorder(self, indices: Index) -> DataProto:
        """A new batch with rows in the order ``indices`` (a permutation or any selection of positions)."""
        return self[_index_to_numpy(indices, len(self)) if not isinstance(indices, slice) else indices]

    def select(
        self,
        batch_keys: Iterable[str] | None = None,
        non_tensor_keys: Iterable[str] | None = None,
        meta_keys: Iterable[str] | None = None,
    ) -> DataProto:
        """A view with only the named keys (``None`` keeps all of that kind). Unknown keys raise ``KeyError``."""

        def pick(d: dict, keys: Iterable[str] | None, what: str) -> dict:
            if keys is None:
                return dict(d)
            missing = [k for k in keys if k not in d]
            if missing:
                raise KeyError(f"{what} has no key(s) {missing}; available: {sorted(d)}")
            return {k: d[k] for k in keys}

        return DataProto(
            batch=pick(self.batch, batch_keys, "batch"),
            non_tensor_batch=pick(self.non_tensor_batch, non_tensor_keys, "non_tensor_batch"),
            meta_info=pick(self.meta_info, meta_keys, "meta_info"),
        )

    def pop(self, batch_keys: Sequence[str] = (), non_tensor_keys: Sequence[str] = ()) -> DataProto:
        """Remove the named keys from this batch and return them as a new batch (meta_info is copied)."""
        missing = [k for k in batch_keys if k not in self.batch] + [
            k for k in non_tensor_keys if k not in self.non_tensor_batch
        ]
        if missing:
            raise KeyError(f"cannot pop missing key(s) {missing}")
        return DataProto(
            batch={k: self.batch.pop(k) for k in batch_keys},
            non_tensor_batch={k: self.non_tensor_batch.pop(k) for k in non_tensor_keys},
            meta_info=dict(self.meta_info),
        )

    def rename(self, old: str, new: str) -> DataProto:
        """Rename a key in ``batch`` (or, if not there, in ``non_tensor_batch``) in place; returns self."""
        for d in (self.batch, self.non_tensor_batch):
            if old in d:
                if new in d and new != old:
                    raise KeyError(f"cannot rename {old!r} to {new!r}: {new!r} already exists")
                d[new] = d.pop(old)
                return self
        raise KeyError(f"no key {old!r} in batch or non_tensor_batch")

    # ------------------------------------------------------------------ combining
    def union(self, other: DataProto) -> DataProto:
        """Merge ``other``'s keys into this batch in place (returns self).

        Raises ``ValueError`` if the lengths differ or a shared key holds different values.
        """
        if len(self) and len(other) and len(self) != len(other):
            raise ValueError(f"cannot union batches of {len(self)} and {len(other)} rows")
        for k, v in other.batch.items():
            if k in self.batch:
                mine = self.batch[k]
                if mine.shape != v.shape or not torch.equal(mine, v.to(mine.device)):
                    raise ValueError(f"union conflict: batch[{k!r}] differs between the two batches")
            else:
                self.batch[k] = v
        for k, v in other.non_tensor_batch.items():
            if k in self.non_tensor_batch:
                mine = self.non_tensor_batch[k]
                if len(mine) != len(v) or any(_neq(a, b) for a, b in zip(mine, v)):
                    raise ValueError(f"union conflict: non_tensor_batch[{k!r}] differs between the two batches")
            else:
                self.non_tensor_batch[k] = v
        for k, v in other.meta_info.items():
            if k in self.meta_info and _neq(self.meta_info[k], v):
                raise ValueError(f"union conflict: meta_info[{k!r}] is {self.meta_info[k]!r} vs {v!r}")
            self.meta_info[k] = v
        self.check_consistency()
        return self

    @staticmethod
    def concat(items: Sequence[DataProto]) -> DataProto:
        """Stack batches row-wise (same keys required); meta_info is taken from the first."""
        if not items:
            raise ValueError("DataProto.concat needs at least one batch")
        keys, nkeys = set(items[0].batch), set(items[0].non_tensor_batch)
        for i, it in enumerate(items):
            if set(it.batch) != keys or set(it.non_tensor_batch) != nkeys:
                raise ValueError(f"DataProto.concat: batch {i} has different keys than batch 0")
        batch = {k: torch.cat([it.batch[k] for it in items], dim=0) for k in items[0].batch}
        non_tensor = {k: np.concatenate([it.non_tensor_batch[k] for it in items]) for k in items[0].non_tensor_batch}
        return DataProto(batch=batch, non_tensor_batch=non_tensor, meta_info=dict(items[0].meta_info))

    def chunk(self, n: int) -> list[DataProto]:
        """Split into ``n`` equal parts; raises ``ValueError`` unless ``len(self)`` is divisible by ``n``."""
        if n <= 0:
            raise ValueError(f"chunk count must be positive, got {n}")
        if len(self) % n:
            raise ValueError(
                f"cannot chunk a batch of {len(self)} rows into {n} equal parts; "
                f"use split(size) for uneven pieces or pick n dividing {len(self)}"
            )
        return self.split(len(self) // n) if len(self) else [self[0:0] for _ in range(n)]

    def split(self, size: int) -> list[DataProto]:
        """Consecutive pieces of ``size`` rows (the last may be shorter)."""
        if size <= 0:
            raise ValueError(f"split size must be positive, got {size}")
        return [self[i : i + size] for i in range(0, len(self), size)]

    def repeat(self, repeat_times: int = 2, interleave: bool = True) -> DataProto:
        """Repeat rows. ``interleave=True``: a,a,b,b (rollout groups); ``False``: a,b,a,b."""
        if repeat_times < 1:
            raise ValueError(f"repeat_times must be >= 1, got {repeat_times}")
        n = len(self)
        if interleave:
            order = np.repeat(np.arange(n), repeat_times)
        else:
            order = np.tile(np.arange(n), repeat_times)
        return self[order]

    def to(self, device: str | torch.device) -> DataProto:
        """Move all tensors to ``device`` in place (returns self)."""
        self.batch = {k: v.to(device) for k, v in self.batch.items()}
        return self


def _neq(a: Any, b: Any) -> bool:
    """Inequality that tolerates numpy arrays / tensors inside object cells."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return not np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))
    try:
        return bool(a != b)
    except Exception:  # noqa: BLE001 - exotic objects: fall back to identity
        return a is not b
