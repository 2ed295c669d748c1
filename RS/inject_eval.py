"""Stage inject's probe scores (--eval_probes): the targets' forget/neighbor FB/QA ROUGE-L of the base model before
training (``inject_eval_before.json``) and of the saved final model after (``inject_eval.json``, DONE's
``inject_scores``)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from data.rwku import resolve_target
from RS.args import TrainArgs
from RS.models import full_weights_loading
from RS.quick_eval import score_probes
from RS.run import Run
from verl.utils.io import atomic_write_json


def evaluates_injection(run: Run) -> bool:
    return run.stage.name == "inject" and run.args.eval_probes


def probe_scores(model, tokenizer, args: TrainArgs, root) -> dict:
    """target folder -> score_probes of ``model`` for each target of --target."""
    out = {}
    for t in [s.strip() for s in args.target.split(",") if s.strip()]:
        target = resolve_target(t, root)
        out[target.folder] = score_probes(model, tokenizer, target, limit=args.inject_probe_limit)
    return out


def scores_of_folder(accelerator, folder: str | Path, tokenizer, args: TrainArgs, root) -> dict | None:
    """Probe scores of the HF model in ``folder`` (the base model, or the run's saved final model) on the main
    process, from a plain copy read in full, while the other processes wait at a barrier: the training model may be
    sharded (an FSDP unit gathers its weights only when every process joins) or partitioned (ZeRO-3)."""
    scores = None
    if accelerator.is_main_process:
        from transformers import AutoModelForCausalLM

        with full_weights_loading(accelerator):
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
        scores = probe_scores(model.to(accelerator.device).eval(), tokenizer, args, root)
        del model
    accelerator.wait_for_everyone()
    return scores


def inject_before(run: Run, path: str) -> dict | None:
    """The base model's scores (main process; None on the others), written to inject_eval_before.json."""
    t0 = time.time()
    before = scores_of_folder(run.accelerator, path, run.tokenizer, run.args, run.root)
    if before is not None:
        atomic_write_json(run.out / "inject_eval_before.json", {
            t: {"scores": v["scores"], "seconds": round(time.time() - t0, 1), "generations": v["generations"]}
            for t, v in before.items()})
        print(f"before injection: { {k: v['scores'] for k, v in before.items()} } ({time.time() - t0:.0f}s)",
              flush=True)
    return before


def inject_after(run: Run, before: dict | None, summary: dict) -> None:
    """The final model's scores beside ``before`` in inject_eval.json and in ``summary`` (main process)."""
    t0 = time.time()
    after = scores_of_folder(run.accelerator, run.out, run.tokenizer, run.args, run.root)
    if after is None:
        return
    res = {t: {"before": before[t]["scores"], "after": after[t]["scores"],
               "generations_after": after[t]["generations"]} for t in after}
    atomic_write_json(run.out / "inject_eval.json", res)
    summary["inject_scores"] = {t: {"before": r["before"], "after": r["after"]} for t, r in res.items()}
    summary["eval_seconds_after"] = round(time.time() - t0, 1)
    print(f"after injection: {summary['inject_scores']}", flush=True)
