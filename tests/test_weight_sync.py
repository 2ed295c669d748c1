"""Weight sync and engine lifecycle of the vLLM rollout without a vLLM engine (fast, CPU): chunking, the shared-memory
buffer, the sleep/wake state machine against a fake ``LLM``, allocator settings, the trainer watchdog and the
process group's timeout. The same code against real vLLM engines: tests/test_vllm_rollout.py, test_trainer_ray.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from verl.config import RolloutConfig
from verl.utils import vllm_engine
from verl.utils.vllm_engine import WeightBuffer, WeightSyncExtension, buffer_bytes, plan_chunks

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- chunks and buffer
def test_plan_chunks_whole_layers_bounded_and_the_rest_last():
    sizes = [("model.embed_tokens.weight", 1000), ("model.layers.0.q.weight", 64), ("model.layers.0.k.weight", 64),
             ("model.layers.1.q.weight", 64), ("model.layers.1.k.weight", 64), ("model.layers.10.q.weight", 192),
             ("model.layers.10.k.weight", 192), ("model.norm.weight", 10), ("lm_head.weight", 1000)]
    chunks = plan_chunks(sizes, 256)
    assert chunks == [["model.layers.0.q.weight", "model.layers.0.k.weight", "model.layers.1.q.weight",
                       "model.layers.1.k.weight"],
                      ["model.layers.10.q.weight", "model.layers.10.k.weight"],  # a layer over the limit: alone
                      ["model.embed_tokens.weight"], ["model.norm.weight"], ["lm_head.weight"]]
    assert sorted(n for c in chunks for n in c) == sorted(n for n, _ in sizes)
    assert buffer_bytes(sizes, 256) == 1024  # the largest group (aligned) when it exceeds a chunk
    assert buffer_bytes(sizes, 4096) == 4096
    with pytest.raises(ValueError, match="positive"):
        plan_chunks(sizes, 0)


def test_buffer_dir_checks_free_space_first(tmp_path, monkeypatch):
    small, big = tmp_path / "shm", tmp_path / "tmp"
    small.mkdir()
    big.mkdir()
    free = {str(small): 10 << 20, str(big): 1 << 30}
    monkeypatch.setattr(vllm_engine.shutil, "disk_usage", lambda d: SimpleNamespace(free=free[str(d)]))
    assert vllm_engine.buffer_dir(1 << 20, (str(small), str(big))) == str(small)
    assert vllm_engine.buffer_dir(100 << 20, (str(small), str(big))) == str(big)  # /dev/shm too small: temp dir
    with pytest.raises(OSError, match=r"needs 2048 MiB.*shm-size.*sync_chunk_mb"):
        vllm_engine.buffer_dir(2 << 30, (str(small), str(big)))


def test_weight_buffer_round_trip_cast_and_nothing_left_on_disk(tmp_path):
    sd = {"w": torch.randn(3, 5), "b": torch.randn(7), "step": torch.tensor([4], dtype=torch.int64)}
    buf = WeightBuffer(4096, str(tmp_path))
    engine = WeightSyncExtension()  # what the engine's worker does: map the file by path, before the unlink
    engine.rule_attach_buffer(buf.path, 4096)
    buf.unlink()
    assert list(tmp_path.iterdir()) == []  # nothing on the file system from here on
    index = buf.pack(sd.items(), torch.bfloat16)
    got = dict(vllm_engine.unpack(engine._rule_raw, index))
    assert got["w"].dtype == torch.bfloat16 and torch.equal(got["w"], sd["w"].to(torch.bfloat16))
    assert torch.equal(got["b"], sd["b"].to(torch.bfloat16))
    assert got["step"].dtype == torch.int64 and got["step"].tolist() == [4]  # integers keep their dtype
    assert all(off % 64 == 0 for *_, off in index)
    with pytest.raises(ValueError, match="exceeds"):
        buf.pack([("huge", torch.zeros(2048))])
    engine.rule_detach_buffer()
    buf.close()


def test_weight_buffer_index_survives_vllm_rpc_serialisation():
    """collective_rpc to an engine process goes through vLLM's msgpack: tensors arrive as plain lists (useless),
    the buffer index arrives intact."""
    serial = pytest.importorskip("vllm.v1.serial_utils")
    enc, dec = serial.MsgpackEncoder(), serial.MsgpackDecoder()
    index = [["model.layers.0.mlp.up_proj.weight", "bfloat16", [128, 64], 4096]]
    assert dec.decode(enc.encode(("collective_rpc", (index,)))) == ["collective_rpc", [index]]
    lost = dec.decode(enc.encode(([("w", torch.arange(1000.0))],)))
    assert not isinstance(lost[0][0][1], torch.Tensor)


def test_sigterm_leaves_no_buffer_file(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from verl.utils.vllm_engine import WeightBuffer, WeightSyncExtension
        buf = WeightBuffer(1 << 20, {str(tmp_path)!r})
        WeightSyncExtension().rule_attach_buffer(buf.path, 1 << 20)
        buf.unlink()
        print(buf.nbytes, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == str(1 << 20)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the rollout against a fake engine
class FakeModel(torch.nn.Module):
    """Copies weights in by name; ``defer`` names wait until ``finish`` (as vLLM keeps an incomplete layer)."""

    def __init__(self, sd: dict[str, torch.Tensor], dtype: torch.dtype, defer: tuple[str, ...] = ()):
        super().__init__()
        self.weights = {k: torch.zeros_like(v, dtype=dtype) for k, v in sd.items()}
        self.loaded: list[list[str]] = []
        self.defer, self.waiting = defer, []

    def load_weights(self, weights):
        names = []
        for name, t in weights:
            if name in self.defer:
                self.waiting.append((name, t))
            else:
                self.weights[name].copy_(t)
            names.append(name)
        self.loaded.append(names)
        return set(names)

    def finish(self):
        for name, t in self.waiting:
            self.weights[name].copy_(t)
        self.waiting = []


class FakeWorker(WeightSyncExtension):
    """vLLM's worker with the extension mixed in (layerwise reload itself is vLLM's, tested with real engines)."""

    def __init__(self, model, log):
        self.model_runner = SimpleNamespace(get_model=lambda: model, device=torch.device("cpu"))
        self.log = log

    def rule_begin_reload(self):
        self.log.append("begin")

    def rule_finish_reload(self):
        self.model_runner.get_model().finish()
        self.log.append("finish")


class FakeLLM:
    """``vllm.LLM``'s surface used by VLLMRollout; RPC arguments pass through vLLM's msgpack for an engine in its
    own process, as they would."""

    def __init__(self, worker, log, in_process: bool):
        self.worker, self.log, self.in_process = worker, log, in_process

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        if not self.in_process:
            serial = pytest.importorskip("vllm.v1.serial_utils")
            args = tuple(serial.MsgpackDecoder().decode(serial.MsgpackEncoder().encode(list(args))))
        if method == "rule_load_buffer":
            self.log.append("load")
        elif method == "rule_load_weights":
            self.log.append("load")
        elif method == "rule_attach_buffer":
            self.log.append("attach")
        return [getattr(self.worker, method)(*args, **(kwargs or {}))]

    def sleep(self, level=1, mode="abort"):
        self.log.append(f"sleep{level}")

    def wake_up(self, tags=None):
        self.log.append(f"wake:{','.join(tags or ['all'])}")

    def reset_prefix_cache(self, *a):
        self.log.append("reset_prefix")

    def generate(self, prompts, params, use_tqdm=False):
        self.log.append("generate")
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[5, 2])]) for _ in prompts]


@pytest.fixture()
def fake_engine(monkeypatch, tiny_model_path, tmp_path):
    """A VLLMRollout on a fake LLM: ``make(world_size, dtype)`` -> (rollout, fake model, call log, state dict)."""
    from verl.workers import rollout as rollout_mod

    made = []

    def make(world_size=2, dtype="bfloat16", chunk_mb=0.01, sleeps=False, defer=()):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hf = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
        sd = {k: v.clone() for k, v in hf.state_dict().items()}
        log: list[str] = []
        model = FakeModel(sd, getattr(torch, dtype), defer)

        def start(path, env, **kwargs):
            assert kwargs["worker_extension_cls"] == "verl.utils.vllm_engine.WeightSyncExtension"
            return FakeLLM(FakeWorker(model, log), log, env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"), 0.0

        monkeypatch.setattr(rollout_mod, "require_vllm", lambda what: None)
        monkeypatch.setattr(rollout_mod, "start_engine", start)
        monkeypatch.setattr(rollout_mod, "shutdown_engine", lambda llm: log.append("shutdown"))
        monkeypatch.setattr(vllm_engine, "buffer_dir", lambda n, c=None: str(tmp_path))
        tok = AutoTokenizer.from_pretrained(tiny_model_path)
        cfg = RolloutConfig(sync_chunk_mb=chunk_mb, kv_cache_bytes=1 << 20)
        eng = rollout_mod.VLLMRollout(tiny_model_path, tok, cfg, 64, dtype, torch.device("cpu"), world_size=world_size)
        log.clear()  # the watchdog's start
        eng.sleeps = sleeps
        made.append(eng)
        return eng, model, log, sd

    yield make
    for eng in made:
        eng.close()


def _batch(meta):
    from verl.protocol import DataProto

    b = DataProto.from_dict(tensors={"input_ids": torch.tensor([[2, 7, 8], [4, 5, 6]]),
                                     "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])})
    b.meta_info = meta
    return b


def test_too_little_shared_memory_stops_before_the_engine_starts(monkeypatch, tiny_model_path):
    from verl.workers import rollout as rollout_mod

    started = []
    monkeypatch.setattr(rollout_mod, "require_vllm", lambda what: None)
    monkeypatch.setattr(rollout_mod, "start_engine", lambda *a, **k: started.append(1))
    monkeypatch.setattr(vllm_engine.shutil, "disk_usage", lambda d: SimpleNamespace(free=1 << 20))
    with pytest.raises(OSError, match="shm-size"):
        rollout_mod.VLLMRollout(tiny_model_path, None, RolloutConfig(), 64, "float32", torch.device("cpu"),
                                world_size=2)
    assert started == []


def test_engine_in_own_process_streams_chunks_through_one_buffer(fake_engine, tmp_path):
    eng, model, log, sd = fake_engine(world_size=2, dtype="bfloat16", chunk_mb=0.01)
    assert not eng.in_process
    for step in range(2):
        sd = {k: v + 0.01 * (step + 1) for k, v in sd.items()}
        eng.sync_weights(sd, tie_word_embeddings=True)
        assert list(tmp_path.iterdir()) == []  # the buffer was unlinked once the engine mapped it
        for k, v in sd.items():
            assert model.weights[k].dtype == torch.bfloat16 and torch.equal(model.weights[k], v.to(torch.bfloat16))
    assert log.count("attach") == 1  # one buffer, reused every step
    assert log.count("begin") == log.count("finish") == 2
    assert max(len(x) for x in model.loaded) < len(sd)  # several chunks per sync
    big = max(v.numel() for v in sd.values()) * 2
    assert eng._buffer.nbytes == max(int(0.01 * 2**20), big + (-big % 64))  # bounded: a chunk or the largest tensor
    eng.close()
    assert list(tmp_path.iterdir()) == [] and eng._buffer is None


def test_layer_waiting_across_chunks_is_detected_and_the_sync_redone_with_copies(fake_engine):
    """A layer vLLM keeps incomplete past its chunk would read the buffer after the next chunk overwrote it."""
    eng, model, log, sd = fake_engine(world_size=2, dtype="float32", defer=("model.norm.weight",))
    eng.sync_weights(sd)
    assert eng.copy_chunks and log.count("begin") == 2  # detected at the norm's chunk, reloaded with copies
    assert all(torch.equal(model.weights[k], v) for k, v in sd.items())
    sd = {k: v + 1 for k, v in sd.items()}
    eng.sync_weights(sd)
    assert log.count("begin") == 3 and all(torch.equal(model.weights[k], v) for k, v in sd.items())


def test_engine_in_this_process_takes_tensors_in_engine_dtype(fake_engine):
    eng, model, log, sd = fake_engine(world_size=1, dtype="float32", chunk_mb=0.05)
    assert eng.in_process
    eng.sync_weights(sd)
    assert "attach" not in log and log[-1] == "reset_prefix"
    assert all(torch.equal(model.weights[k], v) for k, v in sd.items())


def _layer_groups(sd: dict) -> list[list[tuple[str, torch.Tensor]]]:
    """``sd`` as the actor streams it: the tensors outside the decoder layers, then one group per layer."""
    import re

    layers: dict[str, list] = {}
    rest = []
    for k, v in sd.items():
        m = re.match(r"^(.*\.layers\.\d+)\.", k)
        (layers.setdefault(m.group(1), []) if m else rest).append((k, v))
    return [rest, *layers.values()]


def test_sleep_level_2_then_ready_empties_cache_wakes_loads_in_that_order(fake_engine, monkeypatch):
    eng, model, log, sd = fake_engine(world_size=2, sleeps=True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: log.append("empty_cache"))
    eng.device = torch.device("cuda")
    gathered = []

    def units():  # the actor's stream: a unit is gathered only when the sync asks for it
        gathered.append(len(log))
        for group in _layer_groups(sd):
            log.append("gather")
            yield group

    eng.release()  # before the actor's update
    assert log == ["sleep2"] and eng.needs_sync  # level 2: weights discarded, not copied to host
    eng.ready(units)
    assert log[:4] == ["sleep2", "empty_cache", "wake:weights", "begin"]
    assert log[-5:] == ["load", "finish", "reset_prefix", "empty_cache", "wake:kv_cache"]
    body = log[4:-4]
    assert body.count("gather") == 3 and body.index("load") < len(body) - 1 - body[::-1].index("gather")  # interleaved
    assert all(torch.equal(model.weights[k], v.to(torch.bfloat16)) for k, v in sd.items())
    n = len(log)
    for _ in range(3):  # validation chunks: no sleep, wake or sync in between
        eng.ready(units)
        eng.generate(_batch({"max_new_tokens": 2, "do_sample": False}))
    assert log[n:] == ["generate"] * 3 and len(gathered) == 1


def test_stream_chunks_as_plan_chunks_and_reading_one_group_ahead():
    from verl.workers.rollout import stream_chunks

    sizes = [("model.layers.0.q.weight", 64), ("model.layers.0.k.weight", 64), ("model.layers.1.q.weight", 64),
             ("model.layers.1.k.weight", 64), ("model.layers.10.q.weight", 192), ("model.layers.10.k.weight", 192),
             ("model.embed_tokens.weight", 1000), ("model.norm.weight", 10), ("lm_head.weight", 1000)]
    groups = [[(n, torch.zeros(b)) for n, b in sizes[i:j]] for i, j in ((0, 2), (2, 4), (4, 6), (6, 7), (7, 8),
                                                                          (8, 9))]
    read = []

    def stream():
        for g in groups:
            read.append(g[0][0])
            yield g

    chunks = []
    for chunk in stream_chunks(stream(), 256, lambda t: t.numel() + (-t.numel() % 64)):
        chunks.append([n for n, _ in chunk])
        assert len(read) <= sum(map(len, chunks)) + 2  # the chunk out, at most the next group read
    assert chunks == plan_chunks(sizes, 256)


def test_streamed_sync_through_one_buffer_equals_the_dict(fake_engine, tmp_path):
    eng, model, log, sd = fake_engine(world_size=2, dtype="bfloat16", chunk_mb=0.01)
    for step in range(2):
        sd = {k: v + 0.01 * (step + 1) for k, v in sd.items()}
        eng.sync_weights(lambda sd=sd: iter(_layer_groups(sd)), tie_word_embeddings=True)
        assert all(torch.equal(model.weights[k], v.to(torch.bfloat16)) for k, v in sd.items())
    assert log.count("attach") == 1 and list(tmp_path.iterdir()) == []  # sized from the model's files once
    assert max(len(x) for x in model.loaded) < len(sd)


def test_a_streamed_root_unit_is_sent_tensor_by_tensor(fake_engine):
    """The root unit (embeddings, norm, head) arrives as one group; the buffer stays the largest tensor's size."""
    eng, model, log, sd = fake_engine(world_size=2, dtype="bfloat16", chunk_mb=0.001)
    hint = eng.buffer_hint
    eng.sync_weights(lambda: iter(_layer_groups(sd)), tie_word_embeddings=True)
    root = [n for n in sd if ".layers." not in n]
    assert len(root) > 1 and all([n] in model.loaded for n in root)  # each alone: chunks are 1 KiB
    assert eng._buffer.nbytes == hint and log.count("attach") == 1
    assert all(torch.equal(model.weights[k], v.to(torch.bfloat16)) for k, v in sd.items())


def test_a_failed_chunk_still_draws_every_unit_then_raises(fake_engine):
    """Drawing a unit gathers it (a collective): after one rank's engine fails, that rank keeps drawing, so the other
    ranks' gathers complete and every rank reaches the agreement that stops them together."""
    eng, model, log, sd = fake_engine(world_size=2, chunk_mb=0.001)
    groups = _layer_groups(sd)
    groups[0] = [*groups[0], ("no.such.weight", torch.zeros(2))]
    drawn = []

    def units():
        for g in groups:
            drawn.append(g)
            yield g

    eng.mark_stale()
    with pytest.raises(KeyError):
        eng.ready(units)
    assert len(drawn) == len(groups) and log[-1] == "finish" and eng.needs_sync


def test_never_generates_or_wakes_with_stale_weights(fake_engine):
    eng, model, log, sd = fake_engine(world_size=2, sleeps=True)
    meta = {"max_new_tokens": 2, "do_sample": False}
    eng.generate(_batch(meta))  # fresh engine: the actor's start weights
    eng.mark_stale()  # the actor updated
    with pytest.raises(RuntimeError, match="call ready"):
        eng.generate(_batch(meta))
    eng.release()
    with pytest.raises(RuntimeError, match="call ready"):
        eng.generate(_batch(meta))
    eng.ready(lambda: sd)
    eng.generate(_batch(meta))
    assert "wake:all" not in log and not any(x.startswith("sleep1") for x in log)  # level-1 weights never restored
    assert log.index("load") < log.index("wake:kv_cache")


def test_cpu_engine_never_sleeps_and_syncs_once_per_update(fake_engine):
    eng, model, log, sd = fake_engine(world_size=2, sleeps=False)
    calls = []
    eng.release()
    eng.ready(lambda: calls.append(1) or sd)
    assert calls == [] and "sleep2" not in log  # nothing changed: no sync
    eng.mark_stale()
    eng.ready(lambda: calls.append(1) or sd)
    eng.ready(lambda: calls.append(1) or sd)
    assert calls == [1] and eng.syncs == 1


def test_failed_sync_leaves_weights_marked_stale(fake_engine):
    eng, model, log, sd = fake_engine(world_size=2)
    eng.mark_stale()
    with pytest.raises(KeyError):
        eng.ready(lambda: {**sd, "no.such.weight": torch.zeros(2)})
    assert eng.needs_sync and log[-1] == "finish"  # the reload was closed; the next ready() retries


def test_worker_sleeps_the_engine_before_any_other_method():
    from verl.workers.fsdp_workers import FSDPWorker

    released = []
    fake = SimpleNamespace(engine="vllm", rollout=SimpleNamespace(release=lambda: released.append(1)))
    for name in ("generate_sequences", "close"):
        FSDPWorker.before_method(fake, name)
    assert released == []
    for name in ("compute_log_probs", "update_actor", "save_checkpoint"):
        FSDPWorker.before_method(fake, name)
    assert len(released) == 3
    FSDPWorker.before_method(SimpleNamespace(engine="hf"), "update_actor")  # HF: nothing to release


# ---------------------------------------------------------------- allocator settings
def test_expandable_segments_against_sleep_mode():
    env = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512,expandable_segments:True"}
    assert vllm_engine.sleep_mode_env(env, sleep_mode=False, in_process=True, vllm_handles=False) == {}
    assert vllm_engine.sleep_mode_env(env, sleep_mode=True, in_process=True, vllm_handles=True) == {}
    assert vllm_engine.sleep_mode_env(env, True, in_process=False, vllm_handles=False) == {
        "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}  # the engine's own process starts without it
    with pytest.raises(ValueError, match="expandable_segments.*free_cache_engine=false"):
        vllm_engine.sleep_mode_env(env, True, in_process=True, vllm_handles=False)
    assert vllm_engine.sleep_mode_env({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"}, True, True, False) == {}


# ---------------------------------------------------------------- engine processes outlive a killed trainer
WATCH_TREE = textwrap.dedent("""
    import os, subprocess, sys, time
    sys.path.insert(0, sys.argv[1])
    level = int(sys.argv[2])
    if level < 2:  # trainer (0) -> engine core (1) -> engine worker (2), as a multiprocess vLLM engine
        subprocess.Popen([sys.executable, __file__, sys.argv[1], str(level + 1), sys.argv[3]])
    else:
        from verl.utils.vllm_engine import WeightSyncExtension
        trainer = int(sys.argv[3])
        ext = WeightSyncExtension()
        from verl.utils.vllm_engine import process_identity
        assert ext.rule_watch_trainer(list(process_identity(trainer)))
        print(os.getpid(), os.getppid(), flush=True)
    time.sleep(120)
""")


def test_engine_processes_exit_when_the_trainer_is_killed(tmp_path):
    """vLLM's engine processes survive a SIGKILLed parent; the watchdog the rollout starts in them does not."""
    import psutil

    script = tmp_path / "tree.py"
    script.write_text(WATCH_TREE)
    out = tmp_path / "pids"
    trainer = subprocess.Popen(
        [sys.executable, "-c", f"import os, subprocess, sys, time; subprocess.Popen([sys.executable, {str(script)!r}, "
                               f"{str(REPO)!r}, '1', str(os.getpid())], stdout=open({str(out)!r}, 'w')); "
                               "time.sleep(120)"])
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and out.read_text().strip()):
        time.sleep(0.2)
    worker, core = map(int, out.read_text().split())
    assert psutil.pid_exists(worker) and psutil.pid_exists(core)
    trainer.kill()
    trainer.wait()
    deadline = time.time() + 15
    alive = [worker, core]
    while alive and time.time() < deadline:
        alive = [p for p in alive if vllm_engine.process_identity(p) is not None]
        time.sleep(0.2)
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, "engine processes outlived the trainer"


def test_watchdog_is_not_started_in_the_trainers_own_process():
    assert WeightSyncExtension().rule_watch_trainer([os.getpid(), 0.0]) is False


# ---------------------------------------------------------------- process-group timeout
BARRIER = textwrap.dedent("""
    import os, sys, time, torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[1])
    from verl.workers.fsdp_utils import init_distributed
    minutes = float(sys.argv[2]) if sys.argv[2] != "default" else None
    init_distributed(torch.device("cpu"), "gloo", minutes)
    if int(os.environ["RANK"]) == 0:
        time.sleep(float(sys.argv[3]))  # rank 0 writing a checkpoint
    try:
        dist.barrier()
        print("ok", flush=True)
    except RuntimeError:
        print("timeout", flush=True)
""")


def _barrier_run(tmp_path, minutes: str, rank0_seconds: float) -> list[str]:
    from verl.utils.net import free_port

    script = tmp_path / "barrier.py"
    script.write_text(BARRIER)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    env.pop("RULE_DIST_TIMEOUT_MINUTES", None)
    procs = [subprocess.Popen([sys.executable, str(script), str(REPO), minutes, str(rank0_seconds)],
                              env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) for r in range(2)]
    return [p.communicate(timeout=120)[0].strip() for p in procs]


def test_barrier_waits_for_rank0_as_long_as_the_configured_timeout(tmp_path):
    """The other ranks wait in the checkpoint's barrier while rank 0 writes: the group's timeout decides."""
    assert _barrier_run(tmp_path, "0.02", 4)[1] == "timeout"  # 1.2 s timeout, rank 0 busy 4 s
    assert _barrier_run(tmp_path, "default", 4) == ["ok", "ok"]  # 60 min by default


def test_dist_timeout_from_config_env_and_bad_values(monkeypatch):
    from datetime import timedelta

    from verl.workers.fsdp_utils import dist_timeout

    monkeypatch.delenv("RULE_DIST_TIMEOUT_MINUTES", raising=False)
    assert dist_timeout() == timedelta(minutes=60) and dist_timeout(90) == timedelta(minutes=90)
    monkeypatch.setenv("RULE_DIST_TIMEOUT_MINUTES", "120")
    assert dist_timeout() == timedelta(minutes=120) and dist_timeout(5) == timedelta(minutes=5)
    for bad in (0, -1, "soon"):
        with pytest.raises(ValueError, match="dist_timeout_minutes"):
            dist_timeout(bad)


AGREE = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, sys.argv[1])
    from verl.workers.fsdp_utils import init_distributed
    from verl.workers.rollout import SYNC_FAILED, SYNC_OK, agree
    init_distributed(torch.device("cpu"), "gloo")
    print(agree(SYNC_FAILED if os.environ["RANK"] == "1" else SYNC_OK, torch.device("cpu")), flush=True)
""")


def test_ranks_agree_on_the_worst_sync_outcome(tmp_path):
    """One rank's failed (or held-view) reload is every rank's: all redo the sync or all stop together."""
    from verl.utils.net import free_port
    from verl.workers.rollout import SYNC_FAILED, SYNC_HELD, agree

    assert agree(SYNC_HELD, torch.device("cpu")) == SYNC_HELD  # no process group: this rank's own
    script = tmp_path / "agree.py"
    script.write_text(AGREE)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, str(script), str(REPO)], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for r in range(2)]
    assert [p.communicate(timeout=120)[0].strip() for p in procs] == [str(SYNC_FAILED)] * 2
