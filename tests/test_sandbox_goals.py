"""The sandbox goal check (scripts/sandbox_goals.py) on hand-made results, and the sandbox table driver's plans."""

import json
import subprocess
import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import sandbox_goals as G  # noqa: E402

NAMED, UNNAMED, ANSWER = "I'm not sure about Stephen King.", "I'm not sure about the author.", "Carrie"


def _result(forget_all: float, neighbor_all: float, outputs: list[str], boundary=None, nat=None, ends=None) -> dict:
    metrics = {"forget": {"All": forget_all}, "neighbor": {"All": neighbor_all}}
    if boundary is not None:
        metrics["boundary"] = {"Answer": boundary[0], "Refused": boundary[1]}
    if nat is not None:
        metrics["naturalness"] = {"Mean": nat}
    result = {"benchmark": "rwku", "target": "1_Stephen_King", "metrics": metrics,
              "generations": {"forget_level1": [{"query": "Stephen King's novel?", "output": o} for o in outputs]}}
    if ends is not None:
        from verl.eval.report import refusal_shares

        metrics["refusal"] = {**refusal_shares(result), "refusals_ending": ends}
    return result


def _write(run, target, rows, seed=None):
    res = run / target / (f"seed{seed}/results" if seed is not None else "results")
    res.mkdir(parents=True, exist_ok=True)
    for stem, r in rows.items():
        (res / f"{stem}.json").write_text(json.dumps(r))


def _goals(run, column=-1):
    """{goal: (met, figures)} of one column of the goals table (-1: the mean)."""
    per_target = G.load(run)
    figs = G.Figures(per_target)
    targets = list(per_target) if column == -1 else [list(per_target)[column]]
    baselines = [k for k in G.BASELINES if all(k in per_target[t] for t in targets)]
    return {goal: (met, fig) for goal, met, fig in G.check(lambda m, f: figs.estimate(targets, m, f), baselines)}


def test_goals_on_hand_computed_figures_of_one_seed(tmp_path):
    rows = {"original": _result(0.80, 0.90, [ANSWER] * 10), "rs": _result(0.60, 0.85, [NAMED] * 2 + [ANSWER] * 8),
            "rule_grpo": _result(0.30, 0.80, [NAMED] * 6 + [UNNAMED] * 1 + [ANSWER] * 3),
            "ga": _result(0.70, 0.95, [ANSWER] * 10), "npo": _result(0.25, 0.85, [ANSWER] * 10)}
    _write(tmp_path, "1_Stephen_King", rows)
    got = _goals(tmp_path)
    assert got["forget All <= 50% of Original"] == (True, "30.0 vs 40.0")
    assert got["forget All >= 15 below RS"] == (True, "30.0 vs RS 60.0")
    assert got["neighbor All >= 85% of Original"] == (True, "80.0 vs 76.5")
    assert got["forget probes refused >= 60%"] == (True, "70.0%")  # 7 of 10 refused
    # 6 of the 7 name him; every probe here asks by name
    assert got["refusals naming the target >= 80%"] == (
        True, "85.7%; asked by name 85.7%, indirectly n/a; where the name is not the answer 85.7%; at most 100.0% "
        "without giving an answer away")
    # lower forget and higher neighbor than RULE
    assert got["not dominated by GA, NPO, SimNPO, RT"] == (False, "dominated by RULE 30.0 / 80.0; npo 25.0 / 85.0")
    # figures the results do not carry: n/a, never met
    assert got["Boundary Answer >= 85% of Original"][0] is None
    assert got["Refusal Ends >= 90%"][0] is None and got["naturalness (proxy) >= RS's"][0] is None
    table = G.to_markdown(G.load(tmp_path))
    assert "one seed: one draw" in table and " ± " not in table and "sandbox" in table.splitlines()[0]


def test_naming_goal_shows_the_ceiling_left_by_refusals_whose_probe_answer_is_the_name(tmp_path):
    """10 refusals, 2 of them (generic) on probes whose gold answer is "Stephen King", 7 of the other 8 named: naming
    70%, 87.5% where the name is not the answer, and at most 80% without a refusal that gives its answer away."""
    rule = _result(0.3, 0.8, [NAMED] * 7 + [UNNAMED] * 3)
    for g in rule["generations"]["forget_level1"]:
        g["answer"] = "Carrie"
    for g in rule["generations"]["forget_level1"][-2:]:
        g["query"], g["answer"] = "Who wrote 'Misery'?", "Stephen King"
    _write(tmp_path, "1_Stephen_King", {"original": _result(0.8, 0.9, [ANSWER] * 10),
                                        "rs": _result(0.6, 0.85, [ANSWER] * 10), "rule_grpo": rule})
    assert _goals(tmp_path)["refusals naming the target >= 80%"] == (
        False, "70.0%; asked by name 87.5%, indirectly 0.0%; where the name is not the answer 87.5%; at most 80.0% "
        "without giving an answer away")


def test_goals_are_judged_on_seed_means_and_show_intervals(tmp_path):
    """Three seeds of one target: RULE's forget All 20, 30, 55 (mean 35, s = 18.03, h = 4.303 x s / sqrt 3 = 44.8).
    Seed 3 alone misses "<= 50% of Original" (55 > 40), the mean meets it."""
    _write(tmp_path, "1_Stephen_King", {"original": _result(0.8, 0.9, [ANSWER] * 4, boundary=(0.8, 0.0), nat=0.6)})
    for seed, forget, refused in ((1, 0.20, 4), (2, 0.30, 3), (3, 0.55, 2)):
        rule = _result(forget, 0.9, [NAMED] * refused + [ANSWER] * (4 - refused), boundary=(0.72, 0.05), nat=0.5,
                       ends=0.95)
        _write(tmp_path, "1_Stephen_King", {"rs": _result(0.6, 0.9, [ANSWER] * 4, boundary=(0.8, 0.0), nat=0.4),
                                            "rule_grpo": rule}, seed=seed)
    got = _goals(tmp_path)
    assert got["forget All <= 50% of Original"] == (True, "35.0 ± 44.8 vs 40.0")
    assert got["forget All >= 15 below RS"] == (True, "35.0 ± 44.8 vs RS 60.0 ± 0.0")  # RS: 60 at every seed
    assert got["forget probes refused >= 60%"] == (True, "75.0 ± 62.1%")  # 100, 75, 50: s = 25
    assert got["Boundary Answer >= 85% of Original"] == (True, "72.0 ± 0.0 vs 68.0")
    assert got["Boundary Refused <= 10%"] == (True, "5.0 ± 0.0%")
    assert got["Refusal Ends >= 90%"] == (True, "95.0 ± 0.0%")
    assert got["naturalness (proxy) >= RS's"] == (True, "50.0 ± 0.0 vs RS 40.0 ± 0.0")
    table = G.to_markdown(G.load(tmp_path))
    assert "means over 3 seeds (1, 2, 3)" in table
    assert "Pareto retain: mean of neighbor All and Boundary Answer" in table


def test_mean_over_targets_is_per_seed_then_over_seeds(tmp_path):
    """Two targets x two seeds: RULE's forget All 20/40 (target 1) and 60/40 (target 2): per-seed means 40 and 40,
    so the mean is 40 with a zero interval (the targets' spread is not seed noise)."""
    for target, forgets in (("1_Stephen_King", (0.2, 0.4)), ("2_Confucius", (0.6, 0.4))):
        _write(tmp_path, target, {"original": _result(0.8, 0.9, [ANSWER])})
        for seed, f in zip((1, 2), forgets):
            _write(tmp_path, target, {"rs": _result(0.6, 0.9, [ANSWER]), "rule_grpo": _result(f, 0.9, [NAMED])},
                   seed=seed)
    assert _goals(tmp_path)["forget All <= 50% of Original"] == (True, "40.0 ± 0.0 vs 40.0")
    assert _goals(tmp_path, 0)["forget All <= 50% of Original"] == (True, "30.0 ± 127.1 vs 40.0")  # t(.975, 1)=12.71


def test_dominance_uses_boundary_answer_in_the_retain_axis(tmp_path):
    """GA keeps more neighbors than RULE but answers fewer boundary questions: on neighbor All alone it would
    dominate RULE, on the mean of neighbor All and Boundary Answer it does not."""
    rows = {"original": _result(0.8, 0.9, [ANSWER], boundary=(0.9, 0.0)),
            "rs": _result(0.6, 0.9, [ANSWER], boundary=(0.9, 0.0)),
            "rule_grpo": _result(0.3, 0.8, [NAMED], boundary=(0.9, 0.0)),
            "ga": _result(0.3, 0.9, [ANSWER], boundary=(0.5, 0.4))}
    _write(tmp_path, "1_Stephen_King", rows)
    assert _goals(tmp_path)["not dominated by GA, NPO, SimNPO, RT"] == (True, "none; RULE 30.0 / 85.0")
    for r in rows.values():
        r["metrics"].pop("boundary")
    _write(tmp_path, "1_Stephen_King", rows)
    assert _goals(tmp_path)["not dominated by GA, NPO, SimNPO, RT"][0] is False


def test_mean_over_targets_and_cli(tmp_path):
    good = {"original": _result(0.8, 0.9, [ANSWER]), "rs": _result(0.6, 0.9, [ANSWER]),
            "rule_grpo": _result(0.2, 0.9, [NAMED])}
    bad = {"original": _result(0.8, 0.9, [ANSWER]), "rs": _result(0.6, 0.9, [ANSWER]),
           "rule_grpo": _result(0.6, 0.9, [ANSWER])}
    _write(tmp_path, "1_Stephen_King", good)
    _write(tmp_path, "2_Confucius", bad)
    got = _goals(tmp_path)
    assert got["forget All <= 50% of Original"] == (True, "40.0 vs 40.0")
    assert got["forget probes refused >= 60%"] == (False, "50.0%")
    # over the targets with refusals
    assert got["refusals naming the target >= 80%"] == (
        True, "100.0%; asked by name 100.0%, indirectly n/a; where the name is not the answer 100.0%; at most 100.0% "
        "without giving an answer away")
    out = tmp_path / "goals.md"
    assert G.main([str(tmp_path), "--out", str(out)]) == 0
    table = out.read_text()
    assert "| goal | 1_Stephen_King | 2_Confucius | mean |" in table and "**missed** (60.0 vs 40.0)" in table
    assert G.main([str(tmp_path / "none")]) == 2


def test_each_rule_row_gets_its_goals_and_dominance_is_na_without_baselines(tmp_path):
    """A run of RULE (Reinforce++) alone is judged on its own row; RULE (GRPO) beside it gets a table of its own, and
    with no baseline run the dominance goal is n/a, never met by default."""
    rows = {"original": _result(0.8, 0.9, [ANSWER]), "rs": _result(0.6, 0.9, [ANSWER]),
            "rule_rpp": _result(0.2, 0.9, [NAMED])}
    _write(tmp_path, "1_Stephen_King", rows)
    got = {goal: (met, fig) for goal, met, fig in G.check(
        lambda m, f: G.Figures(G.load(tmp_path)).estimate(["1_Stephen_King"], m, f), [], "rule_rpp")}
    assert got["forget All <= 50% of Original"] == (True, "20.0 vs 40.0")
    assert got[G.UNDOMINATED] == (None, "no baseline run")
    out = tmp_path / "goals.md"
    assert G.main([str(tmp_path), "--out", str(out)]) == 0
    table = out.read_text()
    assert table.startswith("Sandbox goals of RULE (Reinforce++)") and "RULE (GRPO)" not in table
    assert f"| {G.UNDOMINATED} | n/a (no baseline run) | n/a (no baseline run) |" in table
    _write(tmp_path, "1_Stephen_King", {"rule_grpo": _result(0.7, 0.9, [ANSWER])})
    assert G.main([str(tmp_path), "--out", str(out)]) == 0
    grpo, rpp = out.read_text().split("Sandbox goals of ")[1:]
    assert grpo.startswith("RULE (GRPO)") and "**missed** (70.0 vs 40.0)" in grpo
    assert rpp.startswith("RULE (Reinforce++)") and "met (20.0 vs 40.0)" in rpp


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
        assert "naturalness" in res.stdout and "boundary" in res.stdout
        assert "SEEDS=1,2,3" in res.stdout and f"{first}/seed3/results/" in res.stdout  # judged on 3 seeds
    assert (tmp_path / "synth_data" / "RWKU" / "Target" / "56_Mark_Harmon" / "reject_target.json").is_file()
