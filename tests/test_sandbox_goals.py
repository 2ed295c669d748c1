"""The sandbox goal check (scripts/sandbox_goals.py) on hand-made results, and the sandbox table driver's plans."""

import json
import subprocess
import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import sandbox_goals as G  # noqa: E402

NAMED, UNNAMED, ANSWER = "I'm not sure about Stephen King.", "I'm not sure about the author.", "Carrie"


def _result(forget_all: float, neighbor_all: float, outputs: list[str]) -> dict:
    return {"benchmark": "rwku", "target": "1_Stephen_King",
            "metrics": {"forget": {"All": forget_all}, "neighbor": {"All": neighbor_all}},
            "generations": {"forget_level1": [{"output": o} for o in outputs]}}


def _write(run, target, rows):
    res = run / target / "results"
    res.mkdir(parents=True)
    for stem, r in rows.items():
        (res / f"{stem}.json").write_text(json.dumps(r))


def test_goals_on_hand_computed_figures(tmp_path):
    rows = {"original": _result(0.80, 0.90, [ANSWER] * 10), "rs": _result(0.60, 0.85, [NAMED] * 2 + [ANSWER] * 8),
            "rule_grpo": _result(0.30, 0.80, [NAMED] * 6 + [UNNAMED] * 1 + [ANSWER] * 3),
            "ga": _result(0.70, 0.95, [ANSWER] * 10), "npo": _result(0.25, 0.85, [ANSWER] * 10)}
    _write(tmp_path, "1_Stephen_King", rows)
    checks = G.check(G.summarise(G.load(tmp_path)["1_Stephen_King"]))
    got = {goal: (met, figures) for goal, met, figures in checks}
    assert got["forget All <= 50% of Original"] == (True, "30.0 vs 40.0")
    assert got["forget All >= 15 below RS"] == (True, "30.0 vs RS 60.0")
    assert got["neighbor All >= 85% of Original"] == (True, "80.0 vs 76.5")
    assert got["forget probes refused >= 60%"] == (True, "70.0%")  # 7 of 10 refused
    assert got["refusals naming the target >= 80%"] == (True, "85.7%")  # 6 of the 7 name him
    assert got["not dominated by a baseline"] == (False, "npo")  # lower forget and higher neighbor than RULE


def test_mean_over_targets_and_cli(tmp_path):
    good = {"original": _result(0.8, 0.9, [ANSWER]), "rs": _result(0.6, 0.9, [ANSWER]),
            "rule_grpo": _result(0.2, 0.9, [NAMED])}
    bad = {"original": _result(0.8, 0.9, [ANSWER]), "rs": _result(0.6, 0.9, [ANSWER]),
           "rule_grpo": _result(0.6, 0.9, [ANSWER])}
    _write(tmp_path, "1_Stephen_King", good)
    _write(tmp_path, "2_Confucius", bad)
    mean = G.mean_summary([G.summarise(r) for r in G.load(tmp_path).values()])
    assert mean["points"]["rule_grpo"] == (40.0, 90.0) and mean["refused"] == 50.0 and mean["named"] == 100.0
    out = tmp_path / "goals.md"
    assert G.main([str(tmp_path), "--out", str(out)]) == 0
    table = out.read_text()
    assert "| goal | 1_Stephen_King | 2_Confucius | mean |" in table and "**missed** (60.0 vs 40.0)" in table
    assert G.main([str(tmp_path / "none")]) == 2


def test_sandbox_table_driver_plans_both_modes(tmp_path, shared_data):
    """Both documented driver commands, as dry runs (the synth mode also builds its template data)."""
    import os

    env = {**os.environ, "LOG_DIR": str(tmp_path), "RULE_DATA_DIR": str(shared_data)}
    env.pop("DATA_DIR", None)
    for mode, first in (("official", "1_Stephen_King"), ("synth", "56_Mark_Harmon")):
        res = subprocess.run(["bash", "scripts/sandbox_table.sh", mode, "--dry-run"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        assert f"== target {first}" in res.stdout and "METHODS=rule_grpo ga npo simnpo rt" in res.stdout
        assert "--prompt_form both" in res.stdout and "data.prompt_format=rwku" in res.stdout
        assert "naturalness" in res.stdout
    assert (tmp_path / "synth_data" / "RWKU" / "Target" / "56_Mark_Harmon" / "reject_target.json").is_file()
