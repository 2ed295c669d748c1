"""In-process worker group: one rank in the driver process (debugging, single device, tests)."""

from __future__ import annotations

import os

from verl.single_controller.base import WorkerGroup


class LocalWorkerGroup(WorkerGroup):
    def __init__(self, worker_cls: type, init_kwargs: dict):
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        self.worker_cls, self.world_size = worker_cls, 1
        self.worker = worker_cls(**init_kwargs)

    def _execute(self, name, per_rank):
        args, kwargs = per_rank[0]
        run = getattr(self.worker, "execute_method", None)
        return [run(name, *args, **kwargs) if run else getattr(self.worker, name)(*args, **kwargs)]

    def shutdown(self) -> None:
        close = getattr(self.worker, "close", None)
        if close:
            close()
