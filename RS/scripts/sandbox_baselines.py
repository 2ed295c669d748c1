"""Knowledge-injection sandbox: run the SFT-style baselines on an injected model and tabulate forget/neighbor scores.

    python RS/scripts/sandbox_baselines.py --model log/rs_demo/inject_1_2 --target 1_Stephen_King \
        --out_dir log/rs_demo/baselines --stages ga ga_gdr npo npo_klr simnpo rwku_rt

Each stage trains with ``RS/configs/<stage>_smollm2.yaml`` (``rwku_rt`` = ``--stage rt --dataset rwku_rt``) into
``<out_dir>/<stage>/`` (skipped when its DONE marker exists), then the quick greedy probe scorer (``RS.quick_eval``,
RWKU prompt format, ROUGE-L recall) scores forget FB/QA and neighbor FB/QA of the target. The injected model itself
is scored as the "original" row. Writes ``<out_dir>/table.md`` and ``<out_dir>/scores.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
SUITES = ("forget_FB", "forget_QA", "neighbor_FB", "neighbor_QA")


def score(model_path: str, target: str, limit: int = 0) -> dict:
    import torch

    from data.rwku import resolve_target
    from RS.quick_eval import score_probes
    from verl.models.embedded import load_model_and_tokenizer

    torch.set_num_threads(1)
    model, tok = load_model_and_tokenizer(model_path)
    return score_probes(model, tok, resolve_target(target), limit=limit)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the injected model (the sandbox's original)")
    p.add_argument("--target", default="1_Stephen_King")
    p.add_argument("--out_dir", default=str(REPO / "log/rs_demo/baselines"))
    p.add_argument("--stages", nargs="+", default=["ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr", "simnpo",
                                                    "simnpo_gdr", "rwku_rt"])
    p.add_argument("--eval_limit", type=int, default=0, help="score at most N probes per file (0: all)")
    p.add_argument("--no_original", action="store_true", help="do not score the injected model itself")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further RS.train flags for every stage")
    a = p.parse_args(argv)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores_path = out / "scores.json"
    results = json.loads(scores_path.read_text()) if scores_path.exists() else {}
    if "original" not in results and not a.no_original:
        t0 = time.time()
        results["original"] = {"scores": score(a.model, a.target, a.eval_limit)["scores"], "eval_seconds": round(time.time() - t0, 1)}
    for st in a.stages:
        run_dir = out / st
        t0 = time.time()
        if not (run_dir / "DONE").exists():
            cmd = [sys.executable, "-m", "RS.train", "--config", str(REPO / f"RS/configs/{st}_smollm2.yaml"),
                   "--model_name_or_path", a.model, "--target", a.target, "--output_dir", str(run_dir),
                   "--overwrite_output_dir", *a.extra]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        train_s = json.loads((run_dir / "DONE").read_text()).get("train_seconds")
        if st not in results:
            t1 = time.time()
            res = score(str(run_dir), a.target, a.eval_limit)
            results[st] = {"scores": res["scores"], "train_seconds": train_s, "eval_seconds": round(time.time() - t1, 1),
                           "generations": res["generations"]}
        tmp = scores_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False))
        os.replace(tmp, scores_path)
        print(st, {k: round(v, 3) for k, v in results[st]["scores"].items()}, f"{time.time() - t0:.0f}s", flush=True)
    lines = ["| method | " + " | ".join(SUITES) + " | train s |", "|---" * (len(SUITES) + 2) + "|"]
    for name, r in results.items():
        cells = [f"{100 * r['scores'].get(s, float('nan')):.1f}" for s in SUITES]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r.get('train_seconds', '')} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
