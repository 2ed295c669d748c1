"""Dispatch modes, the ``register`` decorator and the worker-group base class."""

from __future__ import annotations

import enum
import functools
import os
from collections.abc import Callable
from typing import Any

from verl.protocol import DataProto


class Dispatch(enum.Enum):
    ONE_TO_ALL = "one_to_all"  # same arguments to every rank; returns the list of results
    RANK_ZERO = "rank_zero"  # same arguments to every rank (collectives stay matched); returns rank 0's result
    DP_COMPUTE_PROTO = "dp_compute_proto"  # DataProto args chunked by rank; DataProto results concatenated
    DP_COMPUTE = "dp_compute"  # DataProto args chunked by rank; returns the list of per-rank results


def register(mode: Dispatch) -> Callable:
    """Mark a worker method as callable from the group with the given dispatch mode."""

    def deco(fn):
        fn._dispatch_mode = mode
        return fn

    return deco


class Worker:
    """Base of the per-rank worker classes: knows its rank and world size from the environment."""

    def __init__(self):
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))

    def before_method(self, name: str) -> None:
        """Called before every method the group dispatches (a worker frees or prepares resources here)."""

    def execute_method(self, name: str, *args, **kwargs):
        """The groups' single entry point: ``before_method(name)``, then the method."""
        self.before_method(name)
        return getattr(self, name)(*args, **kwargs)


def split_args(mode: Dispatch, world: int, args: tuple, kwargs: dict) -> list[tuple[tuple, dict]]:
    if mode in (Dispatch.ONE_TO_ALL, Dispatch.RANK_ZERO):
        return [(args, kwargs)] * world

    def chunks(v):
        if isinstance(v, DataProto):
            if len(v) % world:
                raise ValueError(f"a batch of {len(v)} rows cannot be split evenly over {world} workers")
            return v.chunk(world)
        return [v] * world

    a = [chunks(v) for v in args]
    k = {key: chunks(v) for key, v in kwargs.items()}
    return [(tuple(x[r] for x in a), {key: v[r] for key, v in k.items()}) for r in range(world)]


def collect(mode: Dispatch, outputs: list) -> Any:
    if mode == Dispatch.RANK_ZERO:
        return outputs[0]
    if mode == Dispatch.DP_COMPUTE_PROTO:
        return DataProto.concat(outputs)
    return outputs


class WorkerGroup:
    """Calls registered worker methods on every rank: ``group.method(*args)`` dispatches by the method's mode."""

    worker_cls: type
    world_size: int

    def _execute(self, name: str, per_rank: list[tuple[tuple, dict]]) -> list:
        raise NotImplementedError

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("worker_cls", "world_size"):
            raise AttributeError(name)
        fn = getattr(self.worker_cls, name, None)
        mode = getattr(fn, "_dispatch_mode", None)
        if mode is None:
            raise AttributeError(f"{self.worker_cls.__name__}.{name} is not a registered worker method")

        @functools.wraps(fn)
        def call(*args, **kwargs):
            return collect(mode, self._execute(name, split_args(mode, self.world_size, args, kwargs)))

        return call

    def shutdown(self) -> None:
        """Release the workers."""
