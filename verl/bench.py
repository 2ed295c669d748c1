"""Benchmarks: rollout engines side by side, and a ReBO step by phase.

``python -m verl.bench rollout [--config FILE] [--engines hf,vllm] [--prompts 64] [--max-new-tokens 128]
[key=value ...]``
    Builds one worker per engine (``worker.rollout.name``) on the same prompts (the first rows of
    ``data.train_files``) and prints generated tokens/s side by side; for vLLM also the engine start and the
    weight-sync time (timed around the engine's methods). Greedy by default (``--sample``: the config's sampling),
    so the share of outputs identical to the first engine's is shown too. ``--engines`` defaults to hf plus vllm
    when it is importable.
``python -m verl.bench update [--prompts 16] [--bf16] [key=value ...]``
    Times the reference/log-prob pass and the update's forward+backward on the config's prompts (random
    responses) with the plain forward and each optimization of ``verl/workers/forward.py`` (and under bf16
    autocast), with the positions each one runs through the model: the load-independent part of the saving.
``python -m verl.bench eval --model NAME:LABEL=PATH ... [--target T] [--suites forget,neighbor] [-- verl.eval flags]``
    Wall seconds of the evaluator with one process per model against one multi-model process (one engine, weights
    swapped), and whether each model's results are equal both ways.
``python -m verl.bench step --config examples/grpo_rj_rl_cpu.yaml [--steps 1] [--paper-batch] [key=value ...]``
    Runs ``--steps`` ReBO steps (no validation, no checkpoint, nothing written outside a temp dir) and prints the
    trainer's own ``timing/<phase>`` seconds per step. ``--paper-batch`` = 32 prompts x 8 samples, 64 new tokens,
    one update per step.

Both print the load average: the numbers mean something only on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from verl.config import load_config
from verl.eval.cli import model_specs
from verl.models.embedded import load_tokenizer
from verl.single_controller import make_worker_group
from verl.trainer.dataset import RLDataset
from verl.trainer.ray_trainer import RayPPOTrainer
from verl.utils.io import atomic_write_json
from verl.workers import forward

PAPER_BATCH = ["data.rollout_batch_size=32", "worker.actor.global_batch_size=32", "worker.rollout.n=8",
               "data.max_response_length=64"]
PHASES = ("gen", "reward", "old_log_prob", "ref", "values", "adv", "update_critic", "update_actor")
SYNC_METHODS = ("sync_weights", "update_weights", "load_weights")


def machine_line() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus, "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {platform.node()}")


def table(header: list[str], rows: list[list]) -> str:
    """A plain aligned text table (numbers with 2 decimals)."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.2f}"
        return "-" if v is None else str(v)

    cells = [header] + [[fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _load(config_file: str | None, overrides: list[str]):
    return load_config(config_file, overrides)


@contextlib.contextmanager
def method_timer(cls, names: tuple[str, ...], record: dict[str, float]):
    """Time calls of ``cls.<name>`` (summed into ``record[name]``) while the block runs, then restore them."""
    saved = {}
    for name in names:
        fn = cls.__dict__.get(name)
        if fn is None or not callable(fn):
            continue
        saved[name] = fn

        def wrapper(*a, __fn=fn, __name=name, **kw):
            t0 = time.perf_counter()
            try:
                return __fn(*a, **kw)
            finally:
                record[__name] = record.get(__name, 0.0) + time.perf_counter() - t0

        setattr(cls, name, wrapper)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(cls, name, fn)


def default_engines() -> list[str]:
    return ["hf"] + (["vllm"] if importlib.util.find_spec("vllm") is not None else [])


# ---------------------------------------------------------------------------------------------- rollout
def bench_rollout(args) -> dict:
    engines = args.engines.split(",") if args.engines else default_engines()
    base = [*args.overrides, "algorithm.use_kl_loss=false", "algorithm.kl_coef=0",  # no reference model
            f"data.max_response_length={args.max_new_tokens}", f"worker.rollout.micro_batch_size={args.batch}",
            "data.val_files=null", "trainer.n_workers=1", "trainer.backend=local"]
    results, outputs = [], {}
    for engine in engines:
        cfg = _load(args.config, [*base, f"worker.rollout.name={engine}"])
        from verl.workers.fsdp_workers import FSDPWorker  # start-up cost: transformers; --help stays fast

        tok = load_tokenizer(cfg.worker.actor.model_path)
        d = cfg.data
        ds = RLDataset(d.train_files, tok, d.max_prompt_length, d.prompt_key, d.answer_key, d.rwku.data_root)
        prompts = ds.batch(list(range(min(args.prompts, len(ds)))), tok.pad_token_id)
        r = cfg.worker.rollout
        meta = {"do_sample": args.sample, "temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k,
                "max_new_tokens": args.max_new_tokens, "seed": cfg.trainer.seed}
        record: dict[str, float] = {}
        timers = contextlib.ExitStack()
        try:
            import verl.workers.rollout as rollout_mod  # start-up cost: transformers; --help stays fast

            vcls = getattr(rollout_mod, "VLLMRollout", None)
            if vcls is not None:
                timers.enter_context(method_timer(vcls, ("__init__", *SYNC_METHODS), record))
            t0 = time.perf_counter()
            use_gpu = cfg.trainer.device == "cuda" or (cfg.trainer.device == "auto" and torch.cuda.is_available())
            wg = make_worker_group("local", FSDPWorker, 1, use_gpu, {"config": cfg, "resume_dir": None})
            init_s = time.perf_counter() - t0
            chosen = getattr(wg.worker, "engine", engine)
            try:
                warm = prompts[list(range(min(2, len(prompts))))]
                warm.meta_info = {**meta, "max_new_tokens": 4}
                wg.generate_sequences(warm)  # first-call costs (and the first weight sync) out of the timing
                record.pop("sync_weights", None)
                record.pop("update_weights", None)
                record.pop("load_weights", None)
                times, out = [], None
                for _ in range(args.repeats):
                    if hasattr(wg.worker, "rollout_stale"):  # as in a training step: one weight sync, then generation
                        wg.worker.rollout_stale = True
                    batch = prompts[list(range(len(prompts)))]
                    batch.meta_info = dict(meta)
                    t1 = time.perf_counter()
                    out = wg.generate_sequences(batch)
                    times.append(time.perf_counter() - t1)
            finally:
                wg.shutdown()
        finally:
            timers.close()
        tokens = int(out.batch["response_mask"].sum())
        gen_s = statistics.median(times)
        sync_s = sum(record.get(m, 0.0) for m in SYNC_METHODS) / max(1, args.repeats)
        outputs[engine] = out.batch["responses"]
        results.append({"engine": engine, "chosen": chosen, "dtype": cfg.worker.actor.dtype, "init_s": init_s,
                        "engine_start_s": record.get("__init__") if chosen == "vllm" else None,
                        "sync_s": sync_s if chosen == "vllm" else None, "gen_s": gen_s, "tokens": tokens,
                        "tokens_per_s": tokens / gen_s,
                        "tokens_per_s_without_sync": tokens / max(gen_s - sync_s, 1e-9)})
        del wg
    first = engines[0]
    for res in results:
        a, b = outputs[first], outputs[res["engine"]]
        res[f"identical_to_{first}"] = (f"{int((a == b).all(-1).sum())}/{len(a)}"
                                        if not args.sample and a.shape == b.shape else None)
    print(f"rollout: {len(prompts)} prompts x {args.max_new_tokens} new tokens, "
          f"{'sampled' if args.sample else 'greedy'}, median of {args.repeats}; {machine_line()}")
    print(table(["engine", "dtype", "worker init s", "engine start s", "sync s", "gen s", "tokens", "tokens/s",
                 "tokens/s w/o sync", f"same as {first}"],
                [[r["chosen"], r["dtype"], r["init_s"], r["engine_start_s"], r["sync_s"], r["gen_s"], r["tokens"],
                  r["tokens_per_s"], r["tokens_per_s_without_sync"], r[f"identical_to_{first}"]] for r in results]))
    return {"kind": "rollout", "machine": machine_line(), "prompts": len(prompts),
            "max_new_tokens": args.max_new_tokens, "sample": args.sample, "results": results}


# ---------------------------------------------------------------------------------------------- step
def bench_step(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="rule_bench_") as tmp:
        overrides = [*(PAPER_BATCH if args.paper_batch else []), *args.overrides,
                     f"trainer.save_dir={tmp}", "trainer.resume=none", "trainer.val_before_train=false",
                     "trainer.val_at_end=false", "trainer.val_freq=0", "trainer.logger=[]",
                     "trainer.progress_bar=false", f"trainer.total_steps={args.steps}"]
        cfg = _load(args.config, overrides)
        t0 = time.perf_counter()
        trainer = RayPPOTrainer(cfg)
        init_s = time.perf_counter() - t0
        steps = []
        try:
            for step in range(1, args.steps + 1):
                trainer.global_step = step
                t1 = time.perf_counter()
                m = trainer.train_step(step)
                m["timing/step"] = time.perf_counter() - t1
                steps.append(m)
        finally:
            trainer.close()
    phases = [p for p in PHASES if any(f"timing/{p}" in m for m in steps)] + ["step"]
    d, r = cfg.data, cfg.worker.rollout
    engine = getattr(getattr(trainer.wg, "worker", None), "engine", r.name)
    print(f"step: {d.rollout_batch_size} prompts x {r.n} samples, {d.max_response_length} new tokens, "
          f"rollout {engine}, actor {cfg.worker.actor.dtype} autocast={cfg.worker.actor.autocast}; "
          f"trainer init {init_s:.1f} s; "
          f"{machine_line()}")
    rows = [[f"step {i + 1}", *[m.get(f"timing/{p}") for p in phases], m.get("perf/rollout_tokens_per_s")]
            for i, m in enumerate(steps)]
    if len(steps) > 1:
        rest = steps[1:]
        rows.append(["mean 2..", *[statistics.mean(m.get(f"timing/{p}", 0.0) for m in rest) for p in phases],
                     statistics.mean(m.get("perf/rollout_tokens_per_s", 0.0) for m in rest)])
    print(table(["", *[f"{p} s" for p in phases], "gen tokens/s"], rows))
    return {"kind": "step", "machine": machine_line(), "init_s": init_s, "overrides": overrides,
            "steps": [{k: v for k, v in m.items() if k.startswith(("timing/", "perf/", "reward/mean", "actor/"))}
                      for m in steps]}


# ---------------------------------------------------------------------------------------------- update
def synthetic_rollouts(cfg, n_prompts: int, seed: int = 0):
    """The config's first ``n_prompts`` training prompts x ``rollout.n``, with random responses of random length
    (1..max_response_length, EOS-terminated): the shapes and padding of a real step without generating."""
    from verl.workers.rollout import assemble, eos_ids  # start-up cost: transformers; --help stays fast

    tok = load_tokenizer(cfg.worker.actor.model_path)
    d = cfg.data
    ds = RLDataset(d.train_files, tok, d.max_prompt_length, d.prompt_key, d.answer_key, d.rwku.data_root)
    prompts = ds.batch(list(range(min(n_prompts, len(ds)))), tok.pad_token_id).repeat(cfg.worker.rollout.n,
                                                                                        interleave=True)
    g = torch.Generator().manual_seed(seed)
    T = d.max_response_length
    responses = torch.randint(10, len(tok) - 1, (len(prompts), T), generator=g)
    eos = eos_ids(tok)
    lengths = torch.randint(1, T + 1, (len(prompts),), generator=g)
    for i, n in enumerate(lengths.tolist()):
        if n < T:
            responses[i, n - 1] = eos[0]
    out = assemble(prompts, responses, eos, tok.pad_token_id)
    out.batch["advantages"] = torch.randn(len(out), T, generator=g)
    return out


def model_positions(data, micro: int, mode: str) -> tuple[int, int]:
    """(token positions run through the model, positions through the LM head) for one pass over ``data``."""

    T = data.batch["responses"].shape[1]
    body = head = 0
    for mb in data.split(micro):
        mask = mb.batch["attention_mask"]
        B, L = mask.shape
        if mode == "plain":
            body, head = body + B * L, head + B * L
            continue
        start, t = forward.trim_bounds(mask, T)
        P = L - T
        firsts, _ = forward.prompt_groups(mb.batch["input_ids"][:, start:P], mask[:, start:P])
        if mode == "trim" or len(firsts) == B:
            body += B * (P - start + t - 1)
        else:
            body += len(firsts) * (P - start) + B * (t - 1)
        head += B * t
    return body, head


def bench_update(args) -> dict:
    """Seconds of the no-grad log-prob pass and of the update's forward+backward, plain vs optimized forward."""
    from verl.workers import fsdp_utils  # start-up cost: transformers; --help stays fast
    from verl.workers.actor import (  # start-up cost: transformers; --help stays fast
        batched_log_probs,
        response_log_probs,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = _load(args.config, [*(PAPER_BATCH if args.paper_batch else []), *args.overrides])
    a = cfg.worker.actor
    data = synthetic_rollouts(cfg, args.prompts)
    model = fsdp_utils.load_module(a.model_path, "actor", torch.float32, a.gradient_checkpointing)
    mask = data.batch["response_mask"].float()
    variants = [("plain", dict(optimized=False)), ("trim", dict(optimized=True, share_prompt=False)),
                ("trim+share", dict(optimized=True))]
    autocasts = ["none"] + (["bf16"] if args.bf16 else [])

    def no_grad_pass(mode: str, kw: dict, ac: str):
        if mode == "trim+share+sort":
            return batched_log_probs(model, data, a.micro_batch_size_per_device_for_experience, torch.device("cpu"),
                                     1.0, optimized=True, autocast=ac)
        model.eval()
        with torch.no_grad():
            return torch.cat([response_log_probs(model, mb, autocast=ac, **kw)[0]
                              for mb in data.split(a.micro_batch_size_per_device_for_experience)])

    def grad_pass(mode: str, kw: dict, ac: str):
        model.train()
        for mb in data.split(a.micro_batch_size_per_device_for_update):
            lp, _ = response_log_probs(model, mb, with_entropy=True, entropy_grad=False, autocast=ac, **kw)
            m = mb.batch["response_mask"].float()
            (-(lp * mb.batch["advantages"] * m).sum() / m.sum()).backward()
        model.zero_grad(set_to_none=True)

    jobs = []
    for ac in autocasts:
        for mode, kw in [*variants, ("trim+share+sort", {})]:
            jobs.append(("log-probs (no grad)", mode, ac, lambda mode=mode, kw=kw, ac=ac: no_grad_pass(mode, kw, ac)))
        for mode, kw in variants:
            jobs.append(("update fwd+bwd", mode, ac, lambda mode=mode, kw=kw, ac=ac: grad_pass(mode, kw, ac)))
    best: dict[tuple, float] = {}
    best_cpu: dict[tuple, float] = {}  # process CPU time: less sensitive to other processes than wall time
    lps = {}
    for _ in range(args.repeats):  # interleaved repeats: a load spike hits every variant alike
        for pass_name, mode, ac, fn in jobs:
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            key = (pass_name, mode, ac)
            best[key] = min(best.get(key, float("inf")), dt)
            best_cpu[key] = min(best_cpu.get(key, float("inf")), cpu)
            print(f"  {pass_name:20s} {mode:16s} autocast={ac:4s} {dt:8.2f} s wall {cpu:8.2f} s cpu", flush=True)
            if out is not None:
                lps[key] = out
    ref = lps[("log-probs (no grad)", "plain", "none")]
    rows = []
    for (pass_name, mode, ac), dt in best.items():
        micro = (a.micro_batch_size_per_device_for_experience if pass_name.startswith("log")
                 else a.micro_batch_size_per_device_for_update)
        base_mode = "trim+share" if mode == "trim+share+sort" else mode
        body, head = model_positions(data if mode != "trim+share+sort" else data[forward.length_order(data.batch)],
                                     micro, base_mode)
        lp = lps.get((pass_name, mode, ac))
        err = float(((lp - ref).abs() * mask).max()) if lp is not None else None
        cpu = best_cpu[(pass_name, mode, ac)]
        rows.append([pass_name, mode, ac, dt, best[(pass_name, "plain", ac)] / dt, cpu,
                     best_cpu[(pass_name, "plain", ac)] / cpu, body, head, None if err is None else f"{err:.1e}"])
    print(f"update phase: {len(data)} rows ({args.prompts} prompts x {cfg.worker.rollout.n}), "
          f"{data.batch['input_ids'].shape[1]} columns ({data.batch['responses'].shape[1]} response), micro-batches "
          f"{a.micro_batch_size_per_device_for_experience} (no grad) / {a.micro_batch_size_per_device_for_update} "
          f"(update), best of {args.repeats}; {machine_line()}")
    print(table(["pass", "forward", "autocast", "wall s", "speed-up", "cpu s", "cpu speed-up", "model positions",
                 "LM-head positions", "max |dlogp|"], rows))
    return {"kind": "update", "machine": machine_line(), "rows": len(data),
            "results": [dict(zip(["pass", "forward", "autocast", "s", "speedup", "cpu_s", "cpu_speedup",
                                  "model_positions", "head_positions", "max_abs_logp_diff"], r)) for r in rows]}


# ---------------------------------------------------------------------------------------------- evaluator
def _same_result(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("metrics", "generations"))


def bench_eval(args) -> dict:
    """Wall seconds of the evaluator on ``--model`` models: one ``python -m verl.eval`` process per model (as the
    pipeline ran it) against one multi-model process, interleaved ``--repeats`` times; each multi-model result must
    equal the one-process result of the same model (metrics and generations)."""
    specs = model_specs(args.model)
    common = ["--target", args.target, "--suites", args.suites, *args.eval_args]
    root = Path(tempfile.mkdtemp(prefix="rule-bench-eval-"))
    rows, equal = [], []
    for rep in range(args.repeats):
        single_dir, multi_dir = root / f"single{rep}", root / f"multi{rep}"
        t0 = time.perf_counter()
        for sp in specs:
            subprocess.run([sys.executable, "-m", "verl.eval", *common, "--model_path", sp.path, "--method", sp.label,
                            "--output", str(single_dir / f"{sp.name}.json")], check=True, capture_output=True)
        single = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "verl.eval", *common, "--output_dir", str(multi_dir),
                        *(x for sp in specs for x in ("--model", f"{sp.name}:{sp.label}={sp.path}"))],
                       check=True, capture_output=True)
        multi = time.perf_counter() - t0
        loads = [json.loads((multi_dir / f"{sp.name}.json").read_text())["timing"]["load"] for sp in specs]
        equal += [_same_result(json.loads((single_dir / f"{sp.name}.json").read_text()),
                               json.loads((multi_dir / f"{sp.name}.json").read_text())) for sp in specs]
        rows.append([rep + 1, single, single / len(specs), multi, multi / len(specs), single / multi,
                     " ".join(f"{x:.1f}" for x in loads)])
    print(f"evaluator, {len(specs)} models, suites {args.suites}, target {args.target}; {machine_line()}")
    print(table(["repeat", "separate s", "per model", "one process s", "per model", "speed-up",
                 "load/swap s per model (one process)"], rows))
    print(f"results equal to the separate runs: {sum(equal)}/{len(equal)}")
    return {"kind": "eval", "machine": machine_line(), "models": [vars(sp) for sp in specs], "equal": sum(equal),
            "compared": len(equal), "results": [dict(zip(["repeat", "separate_s", "separate_per_model_s",
                                                           "one_process_s", "one_process_per_model_s", "speedup",
                                                           "load_s"], r)) for r in rows]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m verl.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ro = sub.add_parser("rollout", help="tokens/s of the rollout engines on the same prompts")
    ro.add_argument("--config", default="examples/grpo_rj_rl_cpu.yaml", help="trainer YAML (model, data, dtype)")
    ro.add_argument("--engines", default=None, help="comma list of hf,vllm (default: hf, and vllm if importable)")
    ro.add_argument("--prompts", type=int, default=64, help="prompts (first rows of data.train_files)")
    ro.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per prompt")
    ro.add_argument("--batch", type=int, default=64, help="HF generate batch (worker.rollout.micro_batch_size)")
    ro.add_argument("--repeats", type=int, default=1, help="timed generations per engine (median shown)")
    ro.add_argument("--sample", action="store_true", help="sample with the config's temperature/top-p (default greedy)")
    st = sub.add_parser("step", help="seconds per phase of ReBO steps")
    st.add_argument("--config", default="examples/grpo_rj_rl_cpu.yaml", help="trainer YAML")
    st.add_argument("--steps", type=int, default=1, help="steps to run (the mean of steps 2.. is shown too)")
    st.add_argument("--paper-batch", action="store_true", help="32 prompts x 8 samples, 64 new tokens: "
                    + " ".join(PAPER_BATCH))
    up = sub.add_parser("update", help="log-prob and update passes: plain vs optimized forward (and bf16 autocast)")
    up.add_argument("--config", default="examples/grpo_rj_rl_cpu.yaml", help="trainer YAML (model, lengths, micro)")
    up.add_argument("--prompts", type=int, default=16, help="prompts (x worker.rollout.n rows)")
    up.add_argument("--repeats", type=int, default=2, help="interleaved repeats (best shown)")
    up.add_argument("--bf16", action="store_true", help="also time every variant under bf16 autocast")
    up.add_argument("--paper-batch", action="store_true", help="the paper batch's n and lengths")
    up.add_argument("--threads", type=int, default=None, help="torch threads (1: CPU time robust to a busy machine)")
    ev = sub.add_parser("eval", help="the evaluator: one process per model vs one process for all models")
    ev.add_argument("--model", action="append", required=True, metavar="[NAME:]LABEL=PATH",
                    help="a model (repeat), as verl.eval --model")
    ev.add_argument("--target", default="1_Stephen_King", help="RWKU target")
    ev.add_argument("--suites", default="forget,neighbor", help="evaluator suites (default: the main job's)")
    ev.add_argument("--repeats", type=int, default=1, help="interleaved repeats")
    ev.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    ev.add_argument("eval_args", nargs="*", help="more verl.eval flags, after --")
    for p in (ro, st, up):
        p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
        p.add_argument("overrides", nargs="*", help="key=value config overrides (verl/config.py)")
    args = parser.parse_args(argv)
    bad = [o for o in getattr(args, "overrides", []) if "=" not in o]
    if bad:
        parser.error(f"overrides must be key=value, got {bad}")
    result = {"rollout": bench_rollout, "step": bench_step, "update": bench_update, "eval": bench_eval}[args.cmd](args)
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
