"""Ray worker group: a resource pool of ranks, one Ray actor per rank wrapping the same worker class."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from verl.single_controller.base import WorkerGroup

REPO_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass
class RayResourcePool:
    """``n_workers`` ranks on this node, each with one GPU (``use_gpu``) or ``num_cpus_per_worker`` CPUs."""

    n_workers: int
    use_gpu: bool = False
    num_cpus_per_worker: float = 1.0


def worker_env() -> dict[str, str]:
    """Environment every worker gets: the repo on PYTHONPATH and the project's cache/data settings."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p),
           "TOKENIZERS_PARALLELISM": "false"}
    for key in ("RULE_CACHE_DIR", "RULE_DATA_DIR", "HF_HOME", "WANDB_MODE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def ensure_ray(num_cpus: int | None = None) -> None:
    """Start (or join, when RAY_ADDRESS is set) a Ray cluster; the repo is put on the workers' PYTHONPATH."""
    import ray

    if ray.is_initialized():
        return
    kwargs = {"runtime_env": {"env_vars": worker_env()}, "include_dashboard": False, "log_to_driver": True}
    if not os.environ.get("RAY_ADDRESS"):
        kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)


class RayWorkerGroup(WorkerGroup):
    def __init__(self, worker_cls: type, pool: RayResourcePool, init_kwargs: dict):
        import ray

        from verl.utils.net import free_port

        ensure_ray(num_cpus=max(pool.n_workers * int(pool.num_cpus_per_worker), os.cpu_count() or 1))
        self.worker_cls, self.world_size = worker_cls, pool.n_workers
        remote_cls = ray.remote(worker_cls)
        port = str(free_port())
        self.actors = []
        for rank in range(pool.n_workers):
            env = {**worker_env(), "RANK": str(rank), "WORLD_SIZE": str(pool.n_workers), "LOCAL_RANK": str(rank),
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
            if pool.use_gpu:  # Ray sets CUDA_VISIBLE_DEVICES per actor, so every rank sees its GPU as cuda:0
                env["LOCAL_RANK"] = "0"
            options = {"num_cpus": pool.num_cpus_per_worker, "num_gpus": 1 if pool.use_gpu else 0,
                       "runtime_env": {"env_vars": env}, "name": None}
            self.actors.append(remote_cls.options(**options).remote(**init_kwargs))

    def _execute(self, name, per_rank):
        import ray

        refs = [getattr(a, name).remote(*args, **kwargs) for a, (args, kwargs) in zip(self.actors, per_rank)]
        return ray.get(refs)

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
