"""Benchmarks: rollout engines side by side, and a ReBO step by phase.

``python -m verl.bench rollout [--config FILE] [--engines hf,vllm] [--prompts 64] [--max-new-tokens 128] [key=value ...]``
    Builds one worker per engine (``worker.rollout.name``) on the same prompts (the first rows of
    ``data.train_files``) and prints generated tokens/s side by side; for vLLM also the engine start and the
    weight-sync time (timed around the engine's methods). Greedy by default (``--sample``: the config's sampling),
    so the share of outputs identical to the first engine's is shown too. ``--engines`` defaults to hf plus vllm
    when it is importable.
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
import os
import platform
import statistics
import tempfile
import time

import torch

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
    from verl.config import load_config

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
    from verl.single_controller import make_worker_group
    from verl.trainer.dataset import RLDataset

    engines = args.engines.split(",") if args.engines else default_engines()
    base = [*args.overrides, "algorithm.use_kl_loss=false", "algorithm.kl_coef=0",  # no reference model
            f"data.max_response_length={args.max_new_tokens}", f"worker.rollout.micro_batch_size={args.batch}",
            "data.val_files=null", "trainer.n_workers=1", "trainer.backend=local"]
    results, outputs = [], {}
    for engine in engines:
        cfg = _load(args.config, [*base, f"worker.rollout.name={engine}"])
        from transformers import AutoTokenizer

        from verl.models.embedded import resolve_model_path
        from verl.workers.fsdp_workers import FSDPWorker

        tok = AutoTokenizer.from_pretrained(resolve_model_path(cfg.worker.actor.model_path))
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        d = cfg.data
        ds = RLDataset(d.train_files, tok, d.max_prompt_length, d.prompt_key, d.answer_key, d.rwku.data_root)
        prompts = ds.batch(list(range(min(args.prompts, len(ds)))), tok.pad_token_id)
        r = cfg.worker.rollout
        meta = {"do_sample": args.sample, "temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k,
                "max_new_tokens": args.max_new_tokens, "seed": cfg.trainer.seed}
        record: dict[str, float] = {}
        timers = contextlib.ExitStack()
        try:
            import verl.workers.rollout as rollout_mod

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
                        "tokens_per_s": tokens / gen_s, "tokens_per_s_without_sync": tokens / max(gen_s - sync_s, 1e-9)})
        del wg
    first = engines[0]
    for res in results:
        a, b = outputs[first], outputs[res["engine"]]
        res[f"identical_to_{first}"] = (f"{int((a == b).all(-1).sum())}/{len(a)}"
                                        if not args.sample and a.shape == b.shape else None)
    print(f"rollout: {len(prompts)} prompts x {args.max_new_tokens} new tokens, "
          f"{'sampled' if args.sample else 'greedy'}, median of {args.repeats}; {machine_line()}")
    print(table(["engine", "dtype", "worker init s", "engine start s", "sync s", "gen s", "tokens", "tokens/s",
                 f"same as {first}"],
                [[r["chosen"], r["dtype"], r["init_s"], r["engine_start_s"], r["sync_s"], r["gen_s"], r["tokens"],
                  r["tokens_per_s"], r[f"identical_to_{first}"]] for r in results]))
    return {"kind": "rollout", "machine": machine_line(), "prompts": len(prompts),
            "max_new_tokens": args.max_new_tokens, "sample": args.sample, "results": results}


# ---------------------------------------------------------------------------------------------- step
def bench_step(args) -> dict:
    from verl.trainer.ray_trainer import RayPPOTrainer

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
    print(f"step: {d.rollout_batch_size} prompts x {r.n} samples, {d.max_response_length} new tokens, rollout {engine}, "
          f"actor {cfg.worker.actor.dtype} autocast={cfg.worker.actor.autocast}; trainer init {init_s:.1f} s; "
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
    for p in (ro, st):
        p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
        p.add_argument("overrides", nargs="*", help="key=value config overrides (verl/config.py)")
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides must be key=value, got {bad}")
    result = bench_rollout(args) if args.cmd == "rollout" else bench_step(args)
    if args.json:
        from verl.utils.io import atomic_write_json

        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
