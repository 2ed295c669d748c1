"""Does Rejection Steering steer? Train RS on a seeded share of reject_target.json and ask the held-out questions.

    python RS/scripts/check_steering.py --target 1_Stephen_King --out_dir log/rs_demo/rs_1_Stephen_King

Trains (unless ``<out_dir>/model/DONE`` exists) with ``--config`` (default RS/configs/smollm2/rs.yaml) and
``--train_fraction``, then asks the held-out questions (O/heldout.json) and ``--n_neighbor`` neighbor_level2
questions to the base and the trained model (chat template, greedy, ``--max_new_tokens``) and reports the share of
refusals (``verl.rule.refusal.is_refusal``, strict mode) and the share naming the target.
Writes ``<out_dir>/steering.json`` (scores + generations).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from verl.rule.refusal import is_refusal
from verl.utils.io import atomic_write_json

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def ask(model_path: str, questions: list[str], max_new_tokens: int) -> list[str]:
    import torch

    from verl.eval.generation import generate
    from verl.models.embedded import load_model_and_tokenizer
    from verl.utils.chat import format_prompt

    torch.set_num_threads(2)
    model, tok = load_model_and_tokenizer(model_path)
    model.eval()
    prompts = [format_prompt(tok, q) for q in questions]
    return [o.strip() for o in generate(model, tok, prompts, max_new_tokens, stop_strings=(), batch_size=16)]


def score(outputs: list[str], name: str, is_refusal) -> dict:
    n = max(1, len(outputs))
    refused = [is_refusal(o) for o in outputs]
    named = [name.lower() in o.lower() for o in outputs]
    return {"n": len(outputs), "refusal": sum(refused) / n, "names_target": sum(named) / n,
            "refusal_and_named": sum(r and m for r, m in zip(refused, named)) / n}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="1_Stephen_King")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--config", default=str(REPO / "RS/configs/smollm2/rs.yaml"))
    p.add_argument("--out_dir", default=str(REPO / "log/rs_demo/steering"))
    p.add_argument("--train_fraction", type=float, default=0.8)
    p.add_argument("--n_neighbor", type=int, default=20)
    p.add_argument("--max_new_tokens", type=int, default=40)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further RS.train flags")
    a = p.parse_args(argv)
    from data.rwku import resolve_target

    target = resolve_target(a.target)
    out = Path(a.out_dir)
    model_dir = out / "model"
    t0 = time.time()
    if not (model_dir / "DONE").exists():
        cmd = [sys.executable, "-m", "RS.train", "--config", a.config, "--model_name_or_path", a.model,
               "--target", a.target, "--output_dir", str(model_dir), "--train_fraction", str(a.train_fraction),
               "--overwrite_output_dir", *a.extra]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    t_train = time.time() - t0
    heldout = json.load(open(model_dir / "heldout.json", encoding="utf-8"))
    questions = [r["instruction"] for r in heldout]
    neighbors = [r["query"] for r in target.load("neighbor_level2")[: a.n_neighbor]]
    detector = "verl.rule.refusal.is_refusal(strict)"
    result = {"target": target.folder, "detector": detector, "config": a.config, "train_seconds": round(t_train, 1)}
    t1 = time.time()
    for tag, path in (("before", a.model), ("after", str(model_dir))):
        outs = ask(path, questions + neighbors, a.max_new_tokens)
        held, neigh = outs[: len(questions)], outs[len(questions) :]
        result[tag] = {"heldout": score(held, target.name, is_refusal),
                       "neighbor_refusal": score(neigh, target.name, is_refusal)["refusal"],
                       "generations": {"heldout": [{"query": q, "output": o} for q, o in zip(questions, held)],
                                       "neighbor": [{"query": q, "output": o} for q, o in zip(neighbors, neigh)]}}
    result["eval_seconds"] = round(time.time() - t1, 1)
    result["wall_seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "steering.json", result, indent=2)
    for tag in ("before", "after"):
        h = result[tag]["heldout"]
        print(f"{tag:6s} heldout n={h['n']} refusal={h['refusal']:.2f} names_target={h['names_target']:.2f} "
              f"refusal&named={h['refusal_and_named']:.2f} | neighbor refusal={result[tag]['neighbor_refusal']:.2f}")
    print(f"detector: {detector}; train {t_train:.0f}s, eval {result['eval_seconds']:.0f}s, "
          f"wall {result['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
