"""GPU check of ReBO's training path on one GPU, with torch, transformers, accelerate and peft only (no vLLM, no Ray,
no network): what the CPU test suite cannot show.

    bash scripts/gpu_check.sh                      # on the GPU machine (under 10 minutes on one H100 / H200)
    python scripts/gpu_check.py --device cpu --quick   # the same code at tiny sizes (tests/test_gpu_check.py)

Checks, one line each (``[ok]`` / ``[FAIL]`` / ``[skip]``), and a JSON summary in ``--out`` (``$OUT/gpu_check.json``
from the shell script):
  rollout  bf16 FSDP HF rollout (the actor's module in bf16 mixed precision, ``verl.workers.rollout.HFRollout``) on the
           embedded model: tokens/s;
  trainer  two GRPO steps in-process (local worker group, NCCL world size 1, ``trainer.device=cuda``): seconds and
           peak GPU memory per phase (``torch.cuda.max_memory_allocated``, reset at each phase);
  resume   step 2 resumed from step 1's checkpoint against step 2 of the uninterrupted run;
  memory   peak GPU memory of the reference's log-prob pass and of an actor update at Llama-3's vocabulary and the
           paper's lengths, on a random Llama of a few layers, against ``verl.utils.memory``'s prediction.
The exit code is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

GB = 10**9
REWARD = '''
def vowels(response, prompt, solution, **extra):
    return {"score": sum(c in "aeiou" for c in response) / max(1, len(response))}
'''
QUESTIONS = ["Who wrote the novel Carrie?", "What is the capital of France?", "Name a famous painter.",
             "How do plants grow?", "Who was Confucius?", "What does a bass guitar do?", "Why is the sky blue?",
             "What is a prime number?"]
PHASES = ("gen", "reward", "old_log_prob", "ref", "adv", "update_actor", "save")  # leaf phases of a GRPO step


@dataclass(frozen=True)
class Sizes:
    """How big each check runs: the GPU sizes, or tiny ones (``--quick``) that take seconds on a CPU."""

    rollout_prompts: int
    rollout_tokens: int
    rl_prompts: int  # data.rollout_batch_size
    rl_n: int  # worker.rollout.n
    rl_response: int  # data.max_response_length
    dtype: str  # worker.actor.dtype of the trainer steps
    mem_layers: int  # the memory check's random Llama
    mem_hidden: int
    mem_intermediate: int
    mem_heads: int
    mem_kv_heads: int
    mem_vocab: int
    mem_prompt: int  # paper: max_prompt_length 512
    mem_response: int  # paper: max_response_length 1,024
    mem_micro_ref: int  # paper: micro_batch_size_per_device_for_experience 16
    mem_micro_update: int  # paper: micro_batch_size_per_device_for_update 8
    mem_chunk: int  # paper: logprob_chunk_tokens 512


FULL = Sizes(rollout_prompts=64, rollout_tokens=128, rl_prompts=8, rl_n=4, rl_response=64, dtype="bfloat16",
             mem_layers=2, mem_hidden=4096, mem_intermediate=14336, mem_heads=32, mem_kv_heads=8, mem_vocab=128256,
             mem_prompt=512, mem_response=1024, mem_micro_ref=16, mem_micro_update=8, mem_chunk=512)
QUICK = Sizes(rollout_prompts=4, rollout_tokens=8, rl_prompts=2, rl_n=2, rl_response=6, dtype="float32",
              mem_layers=2, mem_hidden=64, mem_intermediate=128, mem_heads=4, mem_kv_heads=2, mem_vocab=1024,
              mem_prompt=16, mem_response=32, mem_micro_ref=4, mem_micro_update=2, mem_chunk=16)


# ------------------------------------------------------------------------------------------------ helpers
def cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def reset_peak(device: torch.device) -> None:
    if cuda(device):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: torch.device) -> float | None:
    """Peak allocated GPU memory since the last ``reset_peak`` (None on a CPU: not measured)."""
    if not cuda(device):
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / GB


def fmt_gb(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} GB"


def prompts_batch(tokenizer, n: int):
    """``n`` chat prompts, left-padded, as the rollout takes them."""
    from verl.protocol import DataProto

    seqs = [tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                          add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            for i in range(n)]
    width = max(len(s) for s in seqs)
    ids = torch.full((n, width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):], mask[i, width - len(s):] = torch.tensor(s), 1
    return DataProto.from_dict(tensors={"input_ids": ids, "attention_mask": mask})


def destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ (a) rollout
def check_rollout(model: str, device: torch.device, s: Sizes) -> dict:
    """bf16 FSDP HF rollout: the actor's FSDP module (fp32 master weights, bf16 compute) generating with sampling."""
    from verl.config import ActorConfig, RolloutConfig
    from verl.models.embedded import load_tokenizer
    from verl.workers import fsdp_utils
    from verl.workers.actor import Actor
    from verl.workers.rollout import HFRollout

    fsdp_utils.init_distributed(device, "auto")
    try:
        tok = load_tokenizer(model)
        actor = Actor(ActorConfig(dtype="bfloat16", gradient_checkpointing=False), model, device, 1, 1.0)
        rollout = HFRollout(actor.module, tok, RolloutConfig(micro_batch_size=s.rollout_prompts), device, 1)
        batch = prompts_batch(tok, s.rollout_prompts)
        batch.meta_info = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 4, "seed": 1}
        rollout.generate(batch)  # warm-up: kernels, allocator
        batch.meta_info = {**batch.meta_info, "max_new_tokens": s.rollout_tokens}
        reset_peak(device)
        t0 = time.perf_counter()
        out = rollout.generate(batch)
        if cuda(device):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        tokens = int(out.batch["response_mask"].sum())
        return {"ok": tokens > 0, "prompts": s.rollout_prompts, "max_new_tokens": s.rollout_tokens,
                "tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
                "peak_gb": peak_gb(device)}
    finally:
        destroy_group()


# ------------------------------------------------------------------------------------------------ (b, c) trainer
@contextlib.contextmanager
def phase_memory(device: torch.device):
    """Record each leaf phase's peak GPU memory as ``memory/<phase>_peak_gb`` beside its ``timing/<phase>``."""
    from verl.trainer import ray_trainer

    real = ray_trainer.timed

    @contextlib.contextmanager
    def timed(name: str, metrics: dict):
        if name not in PHASES:
            with real(name, metrics):
                yield
            return
        reset_peak(device)
        with real(name, metrics):
            yield
        peak = peak_gb(device)
        if peak is not None:
            metrics[f"memory/{name}_peak_gb"] = max(peak, metrics.get(f"memory/{name}_peak_gb", 0.0))

    ray_trainer.timed = timed
    try:
        yield
    finally:
        ray_trainer.timed = real


def trainer_overrides(model: str, run: Path, data: Path, reward: Path, device: torch.device, s: Sizes,
                      **extra) -> list[str]:
    ov = {
        "worker.actor.model_path": model, "data.train_files": str(data), "data.val_files": "null",
        "data.rollout_batch_size": s.rl_prompts, "worker.actor.global_batch_size": s.rl_prompts,
        "worker.rollout.n": s.rl_n, "data.max_response_length": s.rl_response, "data.max_prompt_length": 128,
        "trainer.total_steps": 2, "trainer.save_dir": str(run), "trainer.save_freq": 1, "trainer.save_limit": 2,
        "trainer.val_freq": 0, "worker.actor.dtype": s.dtype, "worker.ref.dtype": s.dtype,
        "worker.actor.gradient_checkpointing": "true", "worker.actor.micro_batch_size_per_device_for_update": 4,
        "worker.actor.micro_batch_size_per_device_for_experience": 8, "worker.actor.optim.lr": 1e-5,
        "worker.rollout.name": "hf", "trainer.backend": "local", "trainer.device": device.type,
        "trainer.n_workers": 1, "trainer.progress_bar": "false", "worker.reward.reward_fn": f"{reward}:vowels",
        "trainer.logger": "[jsonl]", "algorithm.use_kl_loss": "true", "algorithm.kl_coef": 0.01,
    }
    ov.update(extra)
    return [f"{k}={v}" for k, v in ov.items()]


def fit(overrides: list[str], device: torch.device) -> tuple[list[dict], float]:
    """The trainer's per-step metrics (phase peaks added) and its set-up seconds."""
    from verl.config import load_config
    from verl.trainer.ray_trainer import RayPPOTrainer

    t0 = time.perf_counter()
    trainer = RayPPOTrainer(load_config(None, overrides))
    setup = time.perf_counter() - t0
    try:
        with phase_memory(device):
            return trainer.fit(), setup
    finally:
        trainer.close()


RESUME_KEYS = ("reward/mean", "actor/pg_loss", "actor/kl_loss", "actor/grad_norm", "response_length/mean")


def check_trainer_and_resume(model: str, device: torch.device, s: Sizes, work: Path) -> tuple[dict, dict]:
    """Two GRPO steps straight (the trainer check), then step 1 alone and step 2 resumed from its checkpoint."""
    data, reward = work / "train.json", work / "reward.py"
    data.write_text(json.dumps([{"prompt": q, "solution": ["<normal>", "an answer"]} for q in QUESTIONS * 2]))
    reward.write_text(REWARD)
    straight, setup = fit(trainer_overrides(model, work / "a", data, reward, device, s), device)
    phases = {p: {"seconds": round(sum(m.get(f"timing/{p}", 0.0) for m in straight) / len(straight), 3),
                  "peak_gb": max((m[f"memory/{p}_peak_gb"] for m in straight if f"memory/{p}_peak_gb" in m),
                                 default=None)}
              for p in PHASES if any(f"timing/{p}" in m for m in straight)}
    trainer = {"ok": len(straight) == 2 and all(math.isfinite(m["actor/pg_loss"]) for m in straight),
               "steps": len(straight), "setup_seconds": round(setup, 1),
               "step_seconds": [round(m["timing/step"], 2) for m in straight], "phases": phases,
               "dist_backend": "nccl" if cuda(device) else "gloo"}
    first, _ = fit(trainer_overrides(model, work / "b", data, reward, device, s, **{
        "trainer.total_steps": 1, "trainer.keep_resume_state": "true"}), device)
    second, _ = fit(trainer_overrides(model, work / "b", data, reward, device, s), device)
    diffs = {}
    for key in RESUME_KEYS:
        a, b = straight[1].get(key), second[0].get(key) if second else None
        if a is not None and b is not None:
            diffs[key] = abs(a - b) / max(abs(a), 1e-6)
    tol = 1e-3 if cuda(device) else 1e-5
    resume = {"ok": len(first) == 1 and [m["step"] for m in second] == [2] and bool(diffs)
              and max(diffs.values()) <= tol, "tolerance": tol, "relative_diff": diffs}
    return trainer, resume


# ------------------------------------------------------------------------------------------------ (d) memory
def random_llama(s: Sizes, device: torch.device, out: Path) -> dict:
    """A random Llama of ``s.mem_layers`` layers at the given widths, saved in bf16; returns its config dict."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=s.mem_vocab, hidden_size=s.mem_hidden, intermediate_size=s.mem_intermediate,
                      num_hidden_layers=s.mem_layers, num_attention_heads=s.mem_heads,
                      num_key_value_heads=s.mem_kv_heads, max_position_embeddings=s.mem_prompt + s.mem_response,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    del model
    if cuda(device):
        torch.cuda.empty_cache()
    return cfg.to_dict()


def memory_batch(rows: int, s: Sizes, vocab: int):
    """``rows`` random prompt + response rows of the paper's lengths, every token real (no padding)."""
    from verl.protocol import DataProto

    g = torch.Generator().manual_seed(rows)
    p, t = s.mem_prompt, s.mem_response
    ids = torch.randint(0, vocab, (rows, p + t), generator=g)
    return DataProto.from_dict(tensors={
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "responses": ids[:, p:],
        "position_ids": torch.arange(p + t).expand(rows, -1).clone(),
        "response_mask": torch.ones(rows, t, dtype=torch.long),
        "advantages": torch.randn(rows, t, generator=g), "ref_log_probs": torch.zeros(rows, t)})


def predicted(cfg: dict, s: Sizes) -> dict[str, int]:
    """``verl.utils.memory``'s bytes for the same shapes (one GPU, no vLLM), without the CUDA context, which
    ``max_memory_allocated`` does not see: the log-prob phase and the larger of the update and its optimizer step."""
    from verl.pipeline.resources import meta_param_count
    from verl.utils import memory as mem

    shape = mem.shape_from_config(cfg, meta_param_count(cfg), "random llama")
    m = mem.ReboMemory(world=1, prompt_len=s.mem_prompt, response_len=s.mem_response, gen_rows=1,
                       micro_experience=s.mem_micro_ref, actor=mem.RoleMemory(True, micro_update=s.mem_micro_update),
                       ref=mem.RoleMemory(True), critic=mem.RoleMemory(False), chunk_tokens=s.mem_chunk,
                       ref_chunk_tokens=s.mem_chunk, engine="hf", hf_micro_batch=1)
    phases = mem.MemoryPlan("memory check", 1, 80 * GB, mem.rebo_items(shape, m), mem.REBO_PHASES).phase_bytes()
    return {"ref": phases[mem.LOGPROB] - mem.CUDA_CONTEXT,
            "update": max(phases[mem.ACTOR], phases[mem.ACTOR_STEP]) - mem.CUDA_CONTEXT, "n_params": shape.n_params}


def check_memory(device: torch.device, s: Sizes, work: Path) -> dict:
    """Peaks of the reference pass and of an actor update (after a first update allocated AdamW's state, as in a
    run), with the actor, its optimizer and the reference resident, against the plan's phases."""
    from verl.config import ActorConfig, AlgorithmConfig, RefConfig
    from verl.workers import fsdp_utils
    from verl.workers.actor import Actor
    from verl.workers.ref import Reference

    path = work / "random_llama"
    cfg = random_llama(s, device, path)
    want = predicted(cfg, s)
    fsdp_utils.init_distributed(device, "auto")
    try:
        acfg = ActorConfig(dtype="bfloat16", gradient_checkpointing=True, logprob_chunk_tokens=s.mem_chunk,
                           micro_batch_size_per_device_for_update=s.mem_micro_update,
                           micro_batch_size_per_device_for_experience=s.mem_micro_ref)
        actor = Actor(acfg, str(path), device, 1, 1.0)
        ref = Reference(RefConfig(model_path=str(path), dtype="bfloat16", logprob_chunk_tokens=s.mem_chunk), device,
                        1, 1.0, s.mem_micro_ref)
        algo = AlgorithmConfig(use_kl_loss=True, kl_coef=0.01)
        update_rows = memory_batch(s.mem_micro_update, s, s.mem_vocab)
        actor.update(update_rows, algo, 1)  # allocates AdamW's moments, as any step after the first holds them
        reset_peak(device)
        ref.compute_log_probs(memory_batch(s.mem_micro_ref, s, s.mem_vocab))
        got_ref = peak_gb(device)
        reset_peak(device)
        actor.update(update_rows, algo, 1)
        got_update = peak_gb(device)
    finally:
        destroy_group()
    out = {"shape": {"layers": s.mem_layers, "hidden": s.mem_hidden, "vocab": s.mem_vocab,
                     "params": want["n_params"]},
           "ref_pass": {"rows": s.mem_micro_ref, "tokens": s.mem_prompt + s.mem_response,
                        "predicted_gb": want["ref"] / GB, "measured_gb": got_ref},
           "update": {"rows": s.mem_micro_update, "tokens": s.mem_prompt + s.mem_response,
                      "predicted_gb": want["update"] / GB, "measured_gb": got_update}}
    for part in ("ref_pass", "update"):
        p = out[part]
        p["ratio"] = None if p["measured_gb"] is None else round(p["measured_gb"] / p["predicted_gb"], 3)
    # the plan may overestimate; it must not underestimate by more than its 10% margin
    out["ok"] = all(out[p]["ratio"] is None or out[p]["ratio"] <= 1.10 for p in ("ref_pass", "update"))
    out["measured"] = cuda(device)
    return out


# ------------------------------------------------------------------------------------------------ main
def line(name: str, result: dict) -> str:
    if "error" in result:
        return f"[FAIL] {name}: {result['error']}"
    tag = "[ok]  " if result.get("ok") else "[FAIL]"
    if name == "rollout":
        body = (f"bf16 FSDP HF rollout, {result['prompts']} prompts x {result['max_new_tokens']} tokens: "
                f"{result['tokens_per_s']:,.1f} tokens/s ({result['tokens']} tokens in {result['seconds']} s), "
                f"peak {fmt_gb(result['peak_gb'])}")
    elif name == "trainer":
        phases = ", ".join(f"{p} {v['seconds']} s / {fmt_gb(v['peak_gb'])}" for p, v in result["phases"].items())
        body = (f"{result['steps']} GRPO steps in-process ({result['dist_backend']}, world 1): steps "
                f"{result['step_seconds']} s, set-up {result['setup_seconds']} s; per phase: {phases}")
    elif name == "resume":
        worst = max(result["relative_diff"].values(), default=float("nan"))
        body = (f"step 2 resumed from step 1 vs the uninterrupted step 2: largest relative difference {worst:.1e} "
                f"(tolerance {result['tolerance']:.0e}) over {', '.join(result['relative_diff'])}")
    else:
        r, u = result["ref_pass"], result["update"]
        if not result["measured"]:
            tag = "[skip]"
        body = (f"random Llama {result['shape']['layers']} layers x {result['shape']['hidden']}, vocab "
                f"{result['shape']['vocab']:,}: ref pass {r['rows']} x {r['tokens']} tokens predicted "
                f"{r['predicted_gb']:.2f} GB, measured {fmt_gb(r['measured_gb'])} (ratio {r['ratio']}); update "
                f"{u['rows']} x {u['tokens']} predicted {u['predicted_gb']:.2f} GB, measured "
                f"{fmt_gb(u['measured_gb'])} (ratio {u['ratio']})")
    return f"{tag} {name}: {body}"


def run_check(name: str, fn, results: dict) -> None:
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - one failed check must not hide the others' results
        import traceback

        traceback.print_exc()
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if isinstance(out, tuple):
        for sub_name, sub in zip(name.split("+"), out):
            sub["seconds_total"] = round(time.perf_counter() - t0, 1)
            results[sub_name] = sub
            print(line(sub_name, sub), flush=True)
        return
    out["seconds_total"] = round(time.perf_counter() - t0, 1)
    if "+" in name:  # a failure before the pair was split
        for sub_name in name.split("+"):
            results[sub_name] = out
            print(line(sub_name, out), flush=True)
        return
    results[name] = out
    print(line(name, out), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds on a CPU)")
    ap.add_argument("--model", default=None, help="model of checks a-c (default: the embedded SmolLM2-135M-Instruct, "
                                                  "or with --quick a tiny random one)")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json (default: $OUT)")
    ap.add_argument("--checks", default="rollout,trainer,memory", help="comma list of rollout, trainer, memory")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if cuda(device) and not torch.cuda.is_available():
        print("[FAIL] no CUDA device visible (use --device cpu --quick for the CPU run)", flush=True)
        return 1
    if cuda(device):  # the resume check compares two runs: the same kernels must give the same numbers
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    sizes = QUICK if args.quick else FULL
    wanted = {c.strip() for c in args.checks.split(",") if c.strip()}
    results: dict = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        model = args.model or default_model(args.quick, work)
        if "rollout" in wanted:
            run_check("rollout", lambda: check_rollout(model, device, sizes), results)
        if "trainer" in wanted:
            run_check("trainer+resume", lambda: check_trainer_and_resume(model, device, sizes, work), results)
        if "memory" in wanted:
            run_check("memory", lambda: check_memory(device, sizes, work), results)
    summary = {"device": device_name(device), "quick": args.quick, "sizes": asdict(sizes), "model": str(model),
               "seconds": round(time.perf_counter() - t0, 1), "ok": all(r.get("ok") for r in results.values()),
               "checks": results}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(f"gpu_check: {'all checks passed' if summary['ok'] else 'FAILED'} in {summary['seconds']} s on "
          f"{summary['device']}", flush=True)
    return 0 if summary["ok"] else 1


def default_model(quick: bool, work: Path) -> str:
    """The embedded model (built from /tmp/smollm2.gguf on the GPU machine), or with ``quick`` a tiny random one."""
    from verl.models.embedded import build_tiny_model, ensure_embedded_model

    return str(build_tiny_model(work / "tiny") if quick else ensure_embedded_model())


def device_name(device: torch.device) -> str:
    if cuda(device):
        return f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / GB:.0f} GB)"
    return "cpu"


if __name__ == "__main__":
    sys.exit(main())
