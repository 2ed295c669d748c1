"""Ray worker group: one Ray actor per rank, placed through a placement group that may span nodes.

Each rank gets a bundle (``{GPU: 1, CPU: k}`` or ``{CPU: k}``), packed onto as few nodes as possible (PACK). The
actors start empty (``WorkerHost``); rank 0's reports its node's IP and a free port there, which become every
rank's MASTER_ADDR/MASTER_PORT, and only then do the ranks build their workers (and join torch.distributed)
together. ``RAY_ADDRESS`` joins a running cluster (``ray start`` on each node); without it a local one starts.
The checkout must be importable at the same path on every node (it is put on the workers' PYTHONPATH).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from verl.single_controller.base import WorkerGroup

REPO_ROOT = str(Path(__file__).resolve().parents[2])
logger = logging.getLogger("verl.ray")

CLOSE_TIMEOUT_S = float(os.environ.get("RULE_RAY_CLOSE_TIMEOUT_S", 120))
"""How long ``shutdown`` waits for the workers' ``close`` (engine shutdown, process group) before killing them."""
PLACEMENT_TIMEOUT_S = float(os.environ.get("RULE_RAY_PLACEMENT_TIMEOUT_S", 300))
"""How long the placement group may wait for resources that the cluster has but others hold."""


@dataclass
class RayResourcePool:
    """``n_workers`` ranks, each with one GPU (``use_gpu``) or ``num_cpus_per_worker`` CPUs, placed by
    ``strategy`` (PACK: fill a node before the next; STRICT_SPREAD: one rank per node; ...)."""

    n_workers: int
    use_gpu: bool = False
    num_cpus_per_worker: float = 1.0
    strategy: str = "PACK"

    def bundles(self) -> list[dict[str, float]]:
        if self.n_workers < 1:
            raise ValueError(f"trainer.n_workers={self.n_workers}: must be at least 1")
        if self.strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            raise ValueError(f"placement strategy {self.strategy!r}: choose PACK, SPREAD, STRICT_PACK or STRICT_SPREAD")
        one = {"CPU": float(self.num_cpus_per_worker)}
        if self.use_gpu:
            one["GPU"] = 1.0
        return [dict(one) for _ in range(self.n_workers)]


def check_resources(bundles: list[dict[str, float]], cluster: dict[str, float]) -> None:
    """Stop with what is missing when the cluster's totals cannot hold the bundles (the placement group would
    otherwise wait forever)."""
    need: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            need[k] = need.get(k, 0.0) + v
    short = {k: v for k, v in need.items() if cluster.get(k, 0.0) < v}
    if short:
        have = ", ".join(f"{k}={cluster.get(k, 0.0):g}" for k in short)
        want = ", ".join(f"{k}={v:g}" for k, v in short.items())
        raise RuntimeError(f"{len(bundles)} workers need {want} but the Ray cluster has {have}: lower "
                           "trainer.n_workers, or add nodes (`ray start --address=<head>` on each, then "
                           "RAY_ADDRESS=<head> here)")


def rank_envs(places: list[dict], use_gpu: bool) -> list[dict[str, str]]:
    """Per-rank environment from where the actors run: rank 0's node IP and port are the rendezvous; LOCAL_RANK
    counts ranks on the same node (0 on GPUs: Ray gives each actor its own CUDA_VISIBLE_DEVICES)."""
    master = places[0]
    seen: dict[str, int] = {}
    out = []
    for rank, place in enumerate(places):
        local = seen.get(place["node_id"], 0)
        seen[place["node_id"]] = local + 1
        out.append({"RANK": str(rank), "WORLD_SIZE": str(len(places)), "LOCAL_RANK": "0" if use_gpu else str(local),
                    "MASTER_ADDR": master["ip"], "MASTER_PORT": str(master["port"])})
    return out


PASSED_ON = ("RULE_", "HF_", "WANDB_MODE", "NCCL_", "GLOO_", "TORCH_NCCL_", "PYTORCH_", "VLLM_")
"""Variables of the driver's environment every worker gets: Ray starts workers from its raylet, not from the driver,
so on any node they would otherwise miss e.g. NCCL_SOCKET_IFNAME or PYTORCH_CUDA_ALLOC_CONF."""


def worker_env() -> dict[str, str]:
    """Environment every worker gets: the repo on PYTHONPATH and the driver's settings named by ``PASSED_ON``."""
    env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ON)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def ensure_ray(num_cpus: int | None = None) -> None:
    """Start a local Ray instance, or join the cluster at RAY_ADDRESS; the repo is put on the workers' PYTHONPATH."""
    import ray  # optional heavy dependency: ray, only for multi-worker runs

    if ray.is_initialized():
        return
    kwargs = {"runtime_env": {"env_vars": worker_env()}, "include_dashboard": False, "log_to_driver": True}
    if not os.environ.get("RAY_ADDRESS"):
        kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class WorkerHost:
    """The Ray actor of one rank: says where it runs, then builds the worker with its rank's environment and runs
    the group's calls on it."""

    def __init__(self, worker_cls: type):
        self.worker_cls, self.worker = worker_cls, None

    def where(self) -> dict:
        import ray  # optional heavy dependency: ray, only for multi-worker runs

        return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
                "port": _free_port(), "pid": os.getpid()}

    def start(self, env: dict[str, str], init_kwargs: dict) -> None:
        os.environ.update(env)
        self.worker = self.worker_cls(**init_kwargs)

    def execute(self, name: str, args: tuple, kwargs: dict):
        run = getattr(self.worker, "execute_method", None)
        return run(name, *args, **kwargs) if run else getattr(self.worker, name)(*args, **kwargs)

    def close_worker(self) -> None:
        close = getattr(self.worker, "close", None)
        if close is not None:
            close()


class RayWorkerGroup(WorkerGroup):
    def __init__(self, worker_cls: type, pool: RayResourcePool, init_kwargs: dict):
        import ray  # optional heavy dependency: ray, only for multi-worker runs
        from ray.util.placement_group import placement_group  # optional heavy dependency: ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy  # optional heavy dependency: ray

        bundles = pool.bundles()
        ensure_ray(num_cpus=max(int(sum(b["CPU"] for b in bundles)), os.cpu_count() or 1))
        self.worker_cls, self.world_size = worker_cls, pool.n_workers
        self.actors, self.pg, self.places = [], None, []
        check_resources(bundles, ray.cluster_resources())
        try:
            self.pg = placement_group(bundles, strategy=pool.strategy)
            ready, _ = ray.wait([self.pg.ready()], timeout=PLACEMENT_TIMEOUT_S)
            if not ready:
                raise RuntimeError(f"the Ray cluster did not free {bundles[0]} x {len(bundles)} within "
                                   f"{PLACEMENT_TIMEOUT_S:g} s (RULE_RAY_PLACEMENT_TIMEOUT_S); available now: "
                                   f"{ray.available_resources()}")
            host = ray.remote(WorkerHost)
            for rank in range(pool.n_workers):
                strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=rank)
                options = {"num_cpus": pool.num_cpus_per_worker, "num_gpus": 1 if pool.use_gpu else 0,
                           "scheduling_strategy": strategy, "runtime_env": {"env_vars": worker_env()}}
                self.actors.append(host.options(**options).remote(worker_cls))
            self.places = ray.get([a.where.remote() for a in self.actors])
            envs = rank_envs(self.places, pool.use_gpu)
            ray.get([a.start.remote(env, init_kwargs) for a, env in zip(self.actors, envs)])
        except BaseException:
            self.shutdown(timeout=10)
            raise

    def _execute(self, name, per_rank):
        import ray  # optional heavy dependency: ray, only for multi-worker runs

        refs = [a.execute.remote(name, args, kwargs) for a, (args, kwargs) in zip(self.actors, per_rank)]
        return ray.get(refs)

    def shutdown(self, timeout: float | None = None) -> None:
        """Each worker's ``close`` first (its vLLM engine stops cleanly, the process group is left), waiting up to
        ``timeout`` s (RULE_RAY_CLOSE_TIMEOUT_S); then the actors are killed and the placement group removed.

        Decision: ``close`` before ``ray.kill``, because a plain kill skips it: Ray 2.60 then SIGKILLs the actor's
        process group, engines included, which leaves vLLM's own shared memory in /dev/shm; Ray versions that do
        not kill children leave the engines running, which then stop themselves (``vllm_engine.watch_trainer``)."""
        import ray  # optional heavy dependency: ray, only for multi-worker runs

        timeout = CLOSE_TIMEOUT_S if timeout is None else timeout
        actors, self.actors = self.actors, []
        if actors:
            refs = [a.close_worker.remote() for a in actors]
            done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
            for ref in done:
                try:
                    ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a failed close must not stop the others' cleanup
                    logger.warning("a worker's close failed: %s", exc)
            if pending:
                logger.warning("%d worker(s) did not close within %g s; killing them", len(pending), timeout)
            for a in actors:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001 - already dead
                    pass
        pg, self.pg = self.pg, None
        if pg is not None:
            from ray.util.placement_group import remove_placement_group  # optional heavy dependency: ray

            try:
                remove_placement_group(pg)
            except Exception:  # noqa: BLE001 - the cluster may already be gone
                pass
