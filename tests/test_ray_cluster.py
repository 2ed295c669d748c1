"""The Ray worker group: placement bundles and the rendezvous (pure), shutdown that closes workers before killing them
(local Ray), and a two-worker GRPO run across a two-node Ray cluster on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from verl.single_controller.base import Dispatch, Worker, register
from verl.single_controller.ray import RayResourcePool, check_resources, rank_envs

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- pure
def test_bundles_one_per_rank():
    assert RayResourcePool(2, use_gpu=True, num_cpus_per_worker=4).bundles() == [{"CPU": 4.0, "GPU": 1.0}] * 2
    assert RayResourcePool(3).bundles() == [{"CPU": 1.0}] * 3
    with pytest.raises(ValueError, match="n_workers=0"):
        RayResourcePool(0).bundles()
    with pytest.raises(ValueError, match="strategy"):
        RayResourcePool(2, strategy="ANYWHERE").bundles()


def test_check_resources_says_what_is_missing():
    check_resources([{"CPU": 1.0, "GPU": 1.0}] * 4, {"CPU": 64.0, "GPU": 4.0})
    with pytest.raises(RuntimeError, match=r"need GPU=8 but the Ray cluster has GPU=4.*RAY_ADDRESS"):
        check_resources([{"CPU": 1.0, "GPU": 1.0}] * 8, {"CPU": 64.0, "GPU": 4.0})


def test_rank_envs_rendezvous_at_rank0_node():
    places = [{"node_id": "a", "ip": "10.0.0.1", "port": 4242}, {"node_id": "a", "ip": "10.0.0.1", "port": 1},
              {"node_id": "b", "ip": "10.0.0.2", "port": 2}]
    envs = rank_envs(places, use_gpu=False)
    assert {e["MASTER_ADDR"] for e in envs} == {"10.0.0.1"} and {e["MASTER_PORT"] for e in envs} == {"4242"}
    assert [e["RANK"] for e in envs] == ["0", "1", "2"] and {e["WORLD_SIZE"] for e in envs} == {"3"}
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1", "0"]  # counted per node
    assert {e["LOCAL_RANK"] for e in rank_envs(places, use_gpu=True)} == {"0"}  # Ray gives each actor its GPU


def test_worker_env_carries_the_drivers_settings(monkeypatch):
    from verl.single_controller.ray import REPO_ROOT, worker_env

    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth1")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    monkeypatch.setenv("RULE_DIST_TIMEOUT_MINUTES", "90")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    env = worker_env()
    assert env["NCCL_SOCKET_IFNAME"] == "eth1" and env["RULE_DIST_TIMEOUT_MINUTES"] == "90"
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True" and "UNRELATED_SECRET" not in env
    assert env["PYTHONPATH"].split(os.pathsep)[0] == REPO_ROOT


# ---------------------------------------------------------------- local Ray
class MarkerWorker(Worker):
    """Writes a file when closed (or hangs in close); can start a child process as a vLLM engine does."""

    def __init__(self, marker_dir: str, hang_on_close: bool = False):
        super().__init__()
        self.marker_dir, self.hang = Path(marker_dir), hang_on_close

    @register(Dispatch.ONE_TO_ALL)
    def where(self) -> dict:
        return {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")} | {
            "pid": os.getpid()}

    @register(Dispatch.ONE_TO_ALL)
    def start_engine_like_child(self) -> int:
        """A child in its own session (beyond Ray's process-group kill) running the engine-side watchdog."""
        code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from verl.utils.vllm_engine import "
                "WeightSyncExtension, process_identity; WeightSyncExtension().rule_watch_trainer("
                "list(process_identity(int(sys.argv[2])))); time.sleep(300)")
        return subprocess.Popen([sys.executable, "-c", code, str(REPO), str(os.getpid())],
                                start_new_session=True).pid

    def close(self) -> None:
        if self.hang:
            time.sleep(300)
        (self.marker_dir / f"closed_{self.rank}").write_text("ok")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    from verl.single_controller.ray import worker_env

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": worker_env()})
    except Exception as exc:  # noqa: BLE001 - any start failure means "no Ray here"
        pytest.skip(f"Ray could not start: {exc}")
    yield ray
    ray.shutdown()


def _alive(pid: int) -> bool:
    from verl.utils.vllm_engine import process_identity

    return process_identity(pid) is not None


@pytest.mark.ray
def test_shutdown_closes_workers_then_kills_them(local_ray, tmp_path):
    from verl.single_controller.ray import RayWorkerGroup

    group = RayWorkerGroup(MarkerWorker, RayResourcePool(2), {"marker_dir": str(tmp_path)})
    ranks = group.where()
    assert [r["RANK"] for r in ranks] == ["0", "1"] and len({r["MASTER_PORT"] for r in ranks}) == 1
    assert {r["MASTER_ADDR"] for r in ranks} == {group.places[0]["ip"]}
    actors = list(group.actors)
    group.shutdown()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["closed_0", "closed_1"]  # close ran on every rank
    with pytest.raises(local_ray.exceptions.RayActorError):
        local_ray.get(actors[0].where.remote())
    assert local_ray.util.placement_group_table() and all(
        pg["state"] == "REMOVED" for pg in local_ray.util.placement_group_table().values())


@pytest.mark.ray
def test_shutdown_kills_a_worker_whose_close_hangs_and_its_engine_exits(local_ray, tmp_path):
    from verl.single_controller.ray import RayWorkerGroup

    group = RayWorkerGroup(MarkerWorker, RayResourcePool(1), {"marker_dir": str(tmp_path), "hang_on_close": True})
    child = group.start_engine_like_child()[0]
    worker = group.where()[0]["pid"]
    t0 = time.time()
    group.shutdown(timeout=2)
    assert time.time() - t0 < 30 and not (tmp_path / "closed_0").exists()
    deadline = time.time() + 20
    while time.time() < deadline and (_alive(worker) or _alive(child)):
        time.sleep(0.2)
    alive = _alive(child)
    if alive:
        os.kill(child, 9)
    assert not _alive(worker) and not alive, "a process outlived its killed worker"


# ---------------------------------------------------------------- two nodes
@pytest.mark.ray
def test_grpo_two_workers_on_two_ray_nodes(tiny_model_path, tmp_path, shared_data, monkeypatch):
    """A head and a second node on this machine (each its own raylet, one CPU): PACK puts one rank on each, the
    driver joins through RAY_ADDRESS, torch.distributed meets at rank 0's node."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from verl.config import load_config
    from verl.trainer.ray_trainer import RayPPOTrainer

    if ray.is_initialized():
        ray.shutdown()
    # Ray's test cluster, not `ray start`/`ray stop`: `ray stop` ends every Ray process on the machine
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1},
                                                           "include_dashboard": False})
    trainer = None
    try:
        cluster.add_node(num_cpus=1, resources={"node_b": 1})
        cluster.wait_for_nodes()
        monkeypatch.setenv("RAY_ADDRESS", cluster.address)
        ov = {
            "worker.actor.model_path": tiny_model_path, "data.rollout_batch_size": 2,
            "worker.actor.global_batch_size": 2, "worker.rollout.n": 2, "data.max_response_length": 4,
            "data.max_prompt_length": 128, "data.val_files": "null", "trainer.total_steps": 1,
            "trainer.save_dir": str(tmp_path / "run"), "trainer.n_workers": 2, "trainer.backend": "ray",
            "trainer.device": "cpu", "worker.rollout.name": "hf", "worker.actor.dtype": "float32",
            "worker.ref.dtype": "float32", "worker.actor.gradient_checkpointing": "false",
            "worker.actor.micro_batch_size_per_device_for_update": 2, "trainer.progress_bar": "false",
            "trainer.logger": "[jsonl]",
        }
        trainer = RayPPOTrainer(load_config(None, [f"{k}={v}" for k, v in ov.items()]))
        nodes = [p["node_id"] for p in trainer.wg.places]
        assert len(set(nodes)) == 2, "the two ranks should run on different nodes"
        history = trainer.fit()
        assert history[0]["perf/rollout_tokens"] > 0 and "timing/update_actor" in history[0]
    finally:
        if trainer is not None:
            trainer.close()
        ray.shutdown()
        cluster.shutdown()
