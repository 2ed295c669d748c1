"""Single controller: the trainer (driver) calls methods on a group of workers, one per rank.

``Worker`` methods are marked with ``@register(Dispatch.X)`` to say how a call's arguments are spread over the
ranks and how results come back. Two groups share that interface: ``LocalWorkerGroup`` (in-process, one rank,
for debugging and single-device runs) and ``RayWorkerGroup`` (one Ray actor per rank).
"""

from verl.single_controller.base import Dispatch, Worker, WorkerGroup, register
from verl.single_controller.local import LocalWorkerGroup
from verl.single_controller.ray import RayResourcePool, RayWorkerGroup

__all__ = ["Dispatch", "Worker", "WorkerGroup", "register", "make_worker_group"]


def make_worker_group(backend: str, worker_cls, n_workers: int, use_gpu: bool, init_kwargs: dict) -> WorkerGroup:
    """``backend``: local | ray | auto (local for one worker, ray otherwise)."""
    if backend == "auto":
        backend = "local" if n_workers == 1 else "ray"
    if backend == "local":
        if n_workers != 1:
            raise ValueError("trainer.backend=local runs one worker in-process; set trainer.n_workers=1 or backend=ray")
        return LocalWorkerGroup(worker_cls, init_kwargs)
    return RayWorkerGroup(worker_cls, RayResourcePool(n_workers, use_gpu=use_gpu), init_kwargs)
