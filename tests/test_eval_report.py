"""Table maker: averaging over targets, markdown/CSV/LaTeX, the Pareto plot and its AUC, notes on record limits
and unreadable result files."""

import csv
import json
from pathlib import Path

import pytest

from verl.eval.plots import pareto_auc, pareto_frontier
from verl.eval.report import main, make_report


def _rwku(method, target, fb, qa, aa, nfb, nqa, protocol="sandbox", nat=None, created="2026-01-01T00:00:00"):
    metrics = {
        "forget": {"FB": fb, "QA": qa, "AA": aa, "All": (fb + qa + aa) / 3, "All_weighted": 0.5},
        "neighbor": {"FB": nfb, "QA": nqa, "All": (nfb + nqa) / 2, "All_weighted": 0.5},
        "mia": {"FM": {"loss": 2.0}, "RM": {"loss": 1.0}},
    }
    if nat:
        metrics["naturalness"] = {"Read": nat, "Help": nat, "Truth": nat, "Mean": nat, "source": "proxy"}
    return {
        "benchmark": "rwku",
        "method": method,
        "target": target,
        "protocol": protocol,
        "created": created,
        "model_path": "/m",
        "git_commit": None,
        "config": {},
        "metrics": metrics,
        "generations": {},
    }


def _dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    _dump(root / "a" / "GA" / "1_X" / "result.json", _rwku("GA", "1_X", 0.2, 0.4, 0.6, 0.5, 0.7, nat=0.2))
    _dump(root / "a" / "GA" / "2_Y" / "result.json", _rwku("GA", "2_Y", 0.4, 0.2, 0.0, 0.3, 0.5, nat=0.4))
    _dump(root / "b" / "RULE" / "1_X.json", _rwku("RULE", "1_X", 0.1, 0.1, 0.1, 0.8, 0.8))
    # an older duplicate of RULE/1_X (ignored), a paper-protocol result, a MUSE one and non-result JSONs
    _dump(root / "b" / "old.json", _rwku("RULE", "1_X", 0.9, 0.9, 0.9, 0.0, 0.0, created="2025-01-01"))
    _dump(root / "b" / "paper.json", _rwku("RULE", "1_X", 0.3, 0.3, 0.3, 0.6, 0.6, protocol="paper"))
    muse = {
        "benchmark": "muse",
        "method": "RULE",
        "target": "books",
        "protocol": "paper",
        "metrics": {"muse": {"VerbMem": 0.1, "KnowMem_forget": 0.2, "KnowMem_retain": 0.5, "PrivLeak": -0.05}},
    }
    _dump(root / "m" / "muse.json", muse)
    _dump(root / "b" / "config.json", {"lr": 1})
    (root / "b" / "broken.json").write_text("{not json")
    return root


def test_table_means_and_files(runs, tmp_path, capsys):
    out = tmp_path / "report"
    main([str(runs), "--out", str(out), "--retain_threshold", "20", "--by_target"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(out / "report.md")
    summary = json.loads((out / "summary.json").read_text())
    tables = {(t["benchmark"], t["protocol"]): t for t in summary["tables"]}
    assert set(tables) == {("rwku", "sandbox"), ("rwku", "paper"), ("muse", "paper")}
    rows = {r["method"]: r for r in tables[("rwku", "sandbox")]["rows"]}
    ga = rows["GA"]["values"]
    assert rows["GA"]["n_targets"] == 2
    # hand-computed means over the two targets, x100
    assert ga["Forget FB"] == pytest.approx(30.0)
    assert ga["Forget QA"] == pytest.approx(30.0)
    assert ga["Forget AA"] == pytest.approx(30.0)
    assert ga["Forget All"] == pytest.approx((40.0 + 20.0) / 2)
    assert ga["Neighbor All"] == pytest.approx((60.0 + 40.0) / 2)
    assert ga["Naturalness Read"] == pytest.approx(30.0)
    assert ga["MIA FM"] == pytest.approx(2.0)  # losses are not scaled
    assert ga["Utility Gen"] is None
    rule = rows["RULE"]["values"]  # the newer duplicate wins
    assert rows["RULE"]["n_targets"] == 1 and rule["Forget All"] == pytest.approx(10.0)
    assert rule["Naturalness Read"] is None
    assert summary["duplicates"] and "old.json" in summary["duplicates"][0]

    md = (out / "rwku_sandbox.md").read_text()
    assert "sandbox" in md and '"All" = plain mean' in md
    ga_line = next(line for line in md.splitlines() if line.startswith("| GA "))
    assert "| 30.0 | 30.0 | 30.0 | 30.0 |" in ga_line and ga_line.rstrip().endswith("| 2 |")
    rule_line = next(line for line in md.splitlines() if line.startswith("| RULE "))
    assert "| - |" in rule_line
    with open(out / "rwku_sandbox.csv") as f:
        table = list(csv.reader(f))
    assert table[0][0] == "Method" and table[0][-1] == "#Targets" and len(table) == 3
    tex = (out / "rwku_sandbox.tex").read_text()
    assert "\\begin{tabular}" in tex and "\\multicolumn{6}{c}{Forget}" in tex and "sandbox" in tex
    assert (out / "rwku_sandbox_by_target.md").read_text().count("| GA |") == 2
    muse_md = (out / "muse_paper.md").read_text()
    assert "| RULE | 10.0 | 20.0 | 50.0 | -5.0 | 1 |" in muse_md

    # Pareto: x = 100 - forget All, y = neighbor All
    par = tables[("rwku", "sandbox")]["pareto"]
    assert par["points"]["GA"] == pytest.approx([70.0, 50.0])
    assert par["points"]["RULE"] == pytest.approx([90.0, 80.0])
    assert par["frontier"] == ["RULE"]
    assert par["auc_frontier"] == pytest.approx(90 * 60 / (100 * 80))
    png = out / "pareto_rwku_sandbox.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_auc_hand_made_frontier():
    pts = [(50.0, 80.0), (80.0, 40.0), (30.0, 30.0), (90.0, 10.0)]
    assert pareto_frontier(pts) == [0, 1, 3]
    # above retain 30: 50 * (80 - 30) + 30 * (40 - 30) over 100 * 70; the (90, 10) point is below the threshold
    assert pareto_auc(pts, threshold=30) == pytest.approx(2800 / 7000)
    assert pareto_auc(pts, threshold=0) == pytest.approx((50 * 80 + 30 * 40 + 10 * 10) / 10000)
    assert pareto_auc([(100.0, 100.0)], threshold=50) == pytest.approx(1.0)
    assert pareto_auc([(60.0, 40.0)], threshold=50) == 0.0
    with pytest.raises(ValueError):
        pareto_auc(pts, threshold=100)


def test_no_results_is_a_clear_error(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(SystemExit, match="no result JSONs"):
        make_report([tmp_path], tmp_path / "out")


def test_results_of_one_row_from_separate_runs_are_merged(tmp_path):
    root = tmp_path / "runs"
    _dump(root / "rule_1.json", _rwku("RULE", "1_X", 0.1, 0.1, 0.1, 0.8, 0.8, created="2026-01-01"))
    utility = _rwku("rule", "1_X", 0, 0, 0, 0, 0, created="2026-01-02")  # the same method, typed otherwise
    utility["metrics"] = {"utility": {"Gen": 0.25, "Rea": 0.5, "Tru": 0.2, "Fac": 0.1, "Flu": 4.9}}
    _dump(root / "rule_1_utility.json", utility)
    for part, metrics, created in (("verbmem", {"VerbMem": 0.1}, "1"), ("privleak", {"PrivLeak": -0.05}, "2")):
        _dump(root / f"muse_{part}.json", {"benchmark": "muse", "method": "RULE", "target": "books",
                                            "created": created, "metrics": {"muse": metrics}})
    summary = make_report([root], tmp_path / "report")
    tables = {t["benchmark"]: t for t in summary["tables"]}
    (row,) = tables["rwku"]["rows"]
    rule = row["values"]
    assert row["method"] == "rule"  # the newest file's spelling
    assert rule["Forget All"] == pytest.approx(10.0) and rule["Utility Gen"] == pytest.approx(25.0)
    assert rule["Neighbor All"] == pytest.approx(80.0)
    muse = tables["muse"]["rows"][0]["values"]
    assert muse["VerbMem"] == pytest.approx(10.0) and muse["PrivLeak"] == pytest.approx(-5.0)
    assert summary["duplicates"] == []  # different suites complement each other: nothing was replaced


def test_robustness_table_only_for_runs_that_probed(tmp_path):
    root = tmp_path / "runs"
    quant_skipped = {"skipped": True, "reason": "no CUDA GPU"}
    for target, after, best in (("1_X", 0.3, 0.5), ("2_Y", 0.5, 0.7)):
        r = _rwku("RULE", target, 0.1, 0.1, 0.1, 0.8, 0.8)
        r["metrics"]["robustness"] = {
            "relearn": {"forget": {"All": after, "All_weighted": after}, "delta_All": after - 0.1},
            "quant": {"8bit": quant_skipped, "4bit": quant_skipped},
            "logit_lens": {"n": 5, "top_k": 10, "best_layer": 20, "top_k_rate_best": best, "top_k_rate_final": 0.2},
            "timing": {"relearn": 1.0},
        }
        _dump(root / f"rule_{target}.json", r)
    _dump(root / "ga.json", _rwku("GA", "1_X", 0.2, 0.2, 0.2, 0.5, 0.5))  # no probes: no robustness row
    summary = make_report([root], tmp_path / "report")
    (table,) = summary["tables"]
    assert "rwku_sandbox_robustness.md" in table["files"]
    (row,) = table["robustness_rows"]
    v = row["values"]
    assert row["method"] == "RULE" and row["n_targets"] == 2
    assert v["Forget All"] == pytest.approx(10.0) and v["Relearn All"] == pytest.approx(40.0)
    assert v["Quant 8-bit All"] is None  # skipped on both targets
    assert v["Logit lens best layer"] == pytest.approx(20) and v["Logit lens top-k best"] == pytest.approx(60.0)
    md = (tmp_path / "report" / "rwku_sandbox_robustness.md").read_text()
    assert "| RULE | 10.0 | 40.0 | - | - | 20 | 60.0 | 20.0 | 2 |" in md and "GA" not in md


# ------------------------------------------------------------------------------------------- seeds and intervals
def test_t_quantiles_match_the_table():
    from verl.eval.report import estimate, t_quantile

    for df, t in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)):
        assert t_quantile(0.975, df) == pytest.approx(t, abs=1e-4)
    e = estimate([0.2, 0.3, 0.55])  # mean 0.35, s = sqrt(0.0325)
    assert e.mean == pytest.approx(0.35) and e.half == pytest.approx(4.302653 * 0.0325**0.5 / 3**0.5)
    assert estimate([0.4]).half is None and estimate([]).mean is None


def _seeded(root, method, target, seed, f, n, b=None):
    r = _rwku(method, target, f, f, f, n, n)
    if b is not None:
        r["metrics"]["boundary"] = {"Answer": b, "Refused": 0.0}
    folder = root / target / (f"seed{seed}" if seed is not None else "") / "results"
    _dump(folder / f"{method.lower()}.json", r)


@pytest.fixture
def seeded(tmp_path):
    """Two targets; Original shared; RULE at seeds 1-3 with forget All (target 1 / target 2) 0.2/0.4, 0.4/0.4,
    0.3/0.6 -> per-seed means over targets 30, 40, 45 (x100); GA at the same seeds."""
    root = tmp_path / "exp"
    for t in ("1_X", "2_Y"):
        _seeded(root, "Original", t, None, 0.8, 0.9, 0.9)
    for seed, (f1, f2) in zip((1, 2, 3), ((0.2, 0.4), (0.4, 0.4), (0.3, 0.6))):
        _seeded(root, "RULE", "1_X", seed, f1, 0.8, 0.6)
        _seeded(root, "RULE", "2_Y", seed, f2, 0.8, 0.8)
        _seeded(root, "GA", "1_X", seed, 0.5, 0.7, 0.3)
        _seeded(root, "GA", "2_Y", seed, 0.5, 0.7, 0.3)
    return root


def test_cells_are_seed_means_of_target_means_with_95_intervals(seeded, tmp_path):
    from verl.eval.report import t_quantile

    summary = make_report([seeded], tmp_path / "report", by_target=True)
    (table,) = summary["tables"]
    rows = {r["method"]: r for r in table["rows"]}
    half = t_quantile(0.975, 2) * 7.6376261582597 / 3**0.5  # s of 30, 40, 45
    assert rows["RULE"]["values"]["Forget All"] == pytest.approx(38.3333333)
    assert rows["RULE"]["ci95"]["Forget All"] == pytest.approx(half)
    assert rows["RULE"]["seeds"] == [1, 2, 3] and rows["Original"]["seeds"] == []
    assert rows["Original"]["ci95"]["Forget All"] is None  # shared by every seed: no interval
    assert rows["GA"]["ci95"]["Neighbor All"] == pytest.approx(0.0)
    md = (tmp_path / "report" / "rwku_sandbox.md").read_text()
    rule = next(line for line in md.splitlines() if line.startswith("| RULE |"))
    assert f"| 38.3 ± {half:.1f} |" in rule and rule.rstrip().endswith("| 2 | 3 |")
    assert next(line for line in md.splitlines() if line.startswith("| Original |")).rstrip().endswith("| shared |")
    assert "mean over the 3 seeds (1, 2, 3)" in md and "each seed's mean over the targets comes first" in md
    assert "one seed: one draw" not in md
    with open(tmp_path / "report" / "rwku_sandbox.csv") as f:
        head, *lines = list(csv.reader(f))
    i = head.index("Forget All")
    assert head[i + 1] == "Forget All ±95%" and head[-2:] == ["#Targets", "#Seeds"]
    rule_csv = next(r for r in lines if r[0] == "RULE")
    assert rule_csv[i] == "38.3" and rule_csv[i + 1] == f"{half:.1f}"
    tex = (tmp_path / "report" / "rwku_sandbox.tex").read_text()
    assert f"38.3 $\\pm$ {half:.1f}" in tex and "\\#S" in tex
    # per target: the mean over that target's seeds (target 1: 20, 40, 30 -> 30.0 ± t x 10 / sqrt 3)
    by_target = (tmp_path / "report" / "rwku_sandbox_by_target.md").read_text()
    line = next(x for x in by_target.splitlines() if x.startswith("| RULE | 1_X |"))
    assert f"| 30.0 ± {t_quantile(0.975, 2) * 10 / 3**0.5:.1f} |" in line


def test_pareto_uses_boundary_answer_means_and_draws_the_intervals(seeded, tmp_path):
    summary = make_report([seeded], tmp_path / "report")
    par = summary["tables"][0]["pareto"]
    # retain = mean of neighbor All and Boundary Answer: RULE (80 + 70) / 2 = 75, GA (70 + 30) / 2 = 50
    assert par["points"]["RULE"] == pytest.approx([100 - 38.3333333, 75.0])
    assert par["points"]["GA"] == pytest.approx([50.0, 50.0])
    assert par["points"]["Original"] == pytest.approx([20.0, 90.0])
    rule = next(r for r in summary["tables"][0]["rows"] if r["method"] == "RULE")
    assert par["intervals"]["RULE"][0] == pytest.approx(rule["ci95"]["Forget All"]) and rule["ci95"]["Forget All"] > 0
    assert par["intervals"]["Original"] == [None, None]
    # the AUC is that of the means: (20 x 90 + (61.67 - 20) x 75) / 100^2; GA (50, 50) is dominated by RULE
    assert par["auc_frontier"] == pytest.approx((20 * 90 + (100 - 38.3333333 - 20) * 75) / 10000)
    assert par["frontier"] == ["Original", "RULE"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "the seed means; bars: 95% intervals over seeds" in md
    assert "y: Retain (mean of neighbor All and Boundary Answer)" in md


def test_one_seed_table_has_no_interval_and_says_so(runs, tmp_path):
    make_report([runs], tmp_path / "report")
    md = (tmp_path / "report" / "rwku_sandbox.md").read_text()
    assert "one seed: one draw" in md and "±" not in md and "#Seeds" not in md
    assert "±" not in (tmp_path / "report" / "rwku_sandbox.csv").read_text()


def test_seeds_are_never_merged_as_duplicates(tmp_path):
    root = tmp_path / "exp"
    _seeded(root, "RULE", "1_X", 1, 0.2, 0.8)
    _seeded(root, "RULE", "1_X", 2, 0.4, 0.8)
    summary = make_report([root], tmp_path / "report")
    assert summary["duplicates"] == []
    (row,) = summary["tables"][0]["rows"]
    assert row["values"]["Forget All"] == pytest.approx(30.0) and row["n_seeds"] == 2


def _result(path: Path, method: str, limit, forget_all: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": "rwku", "method": method, "target": "1_Stephen_King", "protocol": "paper",
                                "created": "2026-01-01T00:00:00", "config": {"limit": limit, "utility_limit": None},
                                "metrics": {"forget": {"All": forget_all}, "neighbor": {"All": 0.5}}}))


def test_report_flags_mixed_limits_and_unreadable_files(tmp_path, capsys):
    runs = tmp_path / "runs"
    _result(runs / "a.json", "original", None, 0.6)
    _result(runs / "b.json", "rule", 2, 0.1)
    res = make_report([runs], tmp_path / "out")
    notes = res["tables"][0]["notes"]
    assert any("mixed record limits" in n and "--limit 2: rule" in n and "full: original" in n for n in notes), notes
    assert "mixed record limits" in (tmp_path / "out" / "report.md").read_text()
    (runs / "c.json").write_text('{"benchmark": "rwku", "metr')  # a torn / corrupt result file
    assert main([str(runs), "--out", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err
    assert "unreadable result file" in err and "c.json" in err
    assert "c.json" in (tmp_path / "out2" / "report.md").read_text()
    summary = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert summary["unreadable"][0].startswith(str(runs / "c.json"))


def test_report_notes_a_uniform_limit(tmp_path):
    _result(tmp_path / "runs" / "a.json", "original", 5, 0.6)
    notes = make_report([tmp_path / "runs"], tmp_path / "out")["tables"][0]["notes"]
    assert any("every result used --limit 5" in n for n in notes)


def test_rows_are_in_table_order_references_rule_then_baselines(tmp_path):
    labels = ["SimNPO", "RT", "NPO+KLR", "GA", "RULE (PPO)", "NPO", "RS", "Original", "RULE (GRPO)", "MyMethod",
              "Base (before injection)"]
    for i, m in enumerate(labels):
        _dump(tmp_path / "runs" / f"{i}.json", _rwku(m, "1_Stephen_King", 0.5, 0.5, 0.5, 0.9, 0.9))
    res = make_report([tmp_path / "runs"], tmp_path / "out")
    assert [r["method"] for r in res["tables"][0]["rows"]] == [
        "Base (before injection)", "Original", "RS", "RULE (GRPO)", "RULE (PPO)", "GA", "NPO", "NPO+KLR", "SimNPO",
        "RT", "MyMethod"]
