"""The runners end to end through their bash entry points, on a tiny model and the sample target at BUDGET=test:
every stage, the table, and a rerun that skips everything already done. The paper protocol runs in the default
suite; the sandbox, PPO/Reinforce++ on CPU, MUSE and an ablation are slow. A runner that exits non-zero must say
why (an "error:" line naming the stage and its log)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE_TARGET


def _env(tmp_path, **kw) -> dict:
    from verl.pipeline.settings import VARS

    env = {k: v for k, v in os.environ.items() if k not in {v.env for v in VARS}}
    env.update({"TARGETS": SAMPLE_TARGET, "LOG_DIR": str(tmp_path), "BUDGET": "test", "SUITES": "forget,neighbor",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    env.update({k: str(v) for k, v in kw.items()})
    return env


def _run(script: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run(["bash", script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        assert "error:" in res.stderr, f"{script} exited {res.returncode} without saying why:\n{res.stderr[-3000:]}"
    return res


def _check_target(tdir: Path, stages: list[str], rows: list[str]) -> None:
    for stage in stages:
        marker = tdir / stage / ".done"
        assert marker.is_file(), stage
        assert json.loads(marker.read_text())["cmd"], stage
    assert sorted(p.stem for p in (tdir / "results").glob("*.json")) == sorted(rows)


def test_run_rwku_paper_protocol_and_rerun_skips(tiny_model_path, tmp_path):
    """INJECT=0 (the paper protocol, never run by the bash runners): RS -> ReBO GRPO + GA -> evaluation -> table."""
    env = _env(tmp_path, MODEL=tiny_model_path, INJECT=0, METHODS="rule_grpo ga", EXP="p")
    first = _run("run_rwku.sh", env)
    assert first.returncode == 0, first.stderr[-3000:]
    exp = tmp_path / "rwku" / "p"
    tdir = exp / SAMPLE_TARGET
    _check_target(tdir, ["rs", "rule_grpo", "ga"], ["original", "rs", "rule_grpo", "ga"])
    assert not (tdir / "inject").exists()
    report = (exp / "report" / "report.md").read_text()
    for label in ("Original", "RS", "RULE (GRPO)", "GA"):
        assert f"| {label} |" in report, label
    assert "paper" in report and "Base (before injection)" not in report
    assert (tdir / "rule_grpo" / "curves.png").is_file()
    times = json.loads((exp / "stage_times.json").read_text())[SAMPLE_TARGET]
    assert set(times) == {"rs", "rule_grpo", "ga", "eval"}  # one evaluator process for the four models
    assert first.stderr.rstrip().endswith("report/report.md")

    second = _run("run_rwku.sh", env)  # everything done: only skips, then the report again
    assert second.returncode == 0, second.stderr[-3000:]
    assert "] run  " not in second.stderr
    assert second.stderr.count("] skip ") == 3 + 1


def test_a_failing_stage_names_itself_and_its_log(tiny_model_path, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("args: {rs: {dataset: no_such_dataset}}\n")
    res = _run("run_rwku.sh", _env(tmp_path, MODEL=tiny_model_path, INJECT=0, EXP="f", OVERLAYS=str(bad)))
    assert res.returncode == 1
    assert f"error: RS {SAMPLE_TARGET} failed (exit code" in res.stderr and "rs/run.log" in res.stderr
    assert not (tmp_path / "rwku" / "f" / SAMPLE_TARGET / "rs" / ".done").exists()


def test_gpu_budget_on_a_cpu_machine_fails_at_once(tiny_model_path, tmp_path):
    res = _run("examples/exp_target/RWKU/ppo.sh", _env(tmp_path, MODEL=tiny_model_path, INJECT=0, BUDGET="paper"))
    assert res.returncode == 1 and "no GPU is visible" in res.stderr
    assert not (tmp_path / "rwku").exists() or not any((tmp_path / "rwku").rglob(".done"))


@pytest.mark.slow
def test_run_rwku_sandbox(tiny_model_path, tmp_path):
    env = _env(tmp_path, MODEL=tiny_model_path, INJECT=1, METHODS="rule_grpo ga", EXP="t")
    res = _run("run_rwku.sh", env)
    assert res.returncode == 0, res.stderr[-3000:]
    exp = tmp_path / "rwku" / "t"
    _check_target(exp / SAMPLE_TARGET, ["inject", "rs", "rule_grpo", "ga"],
                  ["base", "original", "rs", "rule_grpo", "ga"])
    report = (exp / "report" / "report.md").read_text()
    assert "Base (before injection)" in report and "sandbox" in report


@pytest.mark.slow
def test_ppo_and_reinforce_pp_on_cpu(tiny_model_path, tmp_path):
    env = _env(tmp_path, MODEL=tiny_model_path, INJECT=0, METHODS="rule_ppo rule_rpp", EXP="rl")
    res = _run("run_rwku.sh", env)
    assert res.returncode == 0, res.stderr[-3000:]
    tdir = tmp_path / "rwku" / "rl" / SAMPLE_TARGET
    _check_target(tdir, ["rs", "rule_ppo", "rule_rpp"], ["original", "rs", "rule_ppo", "rule_rpp"])
    import yaml

    for name, algo in (("rule_ppo", "gae"), ("rule_rpp", "reinforce_plus_plus")):
        cfg = yaml.safe_load((tdir / name / "config.yaml").read_text())
        assert cfg["algorithm"]["adv_estimator"] == algo and cfg["trainer"]["device"] == "cpu"
    report = (tmp_path / "rwku" / "rl" / "report" / "report.md").read_text()
    assert "RULE (PPO)" in report and "RULE (Reinforce++)" in report


@pytest.mark.slow
def test_run_muse(tiny_model_path, tmp_path):
    env = _env(tmp_path, MODEL=tiny_model_path, METHODS="rule_grpo ga", EXP_MUSE="m", SUITES="", MUSE_LIMIT=2)
    res = _run("run_muse.sh", env)
    assert res.returncode == 0, res.stderr[-3000:]
    tdir = tmp_path / "muse" / "m" / "books"
    _check_target(tdir, ["data", "rs", "rule_grpo"], ["original", "rs", "rule_grpo"])
    assert "ga: applies to rwku only" in res.stderr
    assert json.loads((tdir / "results" / "rule_grpo.json").read_text())["method"] == "RULE (GRPO)"
    assert "RULE (GRPO)" in (tmp_path / "muse" / "m" / "report" / "report.md").read_text()


@pytest.mark.slow
def test_ablation_without_boundary(tiny_model_path, tmp_path):
    env = _env(tmp_path, MODEL=tiny_model_path, INJECT=0)
    res = _run("examples/exp_target/RWKU/ablation_without_boundary.sh", env)
    assert res.returncode == 0, res.stderr[-3000:]
    tdir = tmp_path / "rwku" / "ablation_without_boundary" / SAMPLE_TARGET
    _check_target(tdir, ["rs", "rule_grpo"], ["original", "rs", "rule_grpo"])
    rows = json.loads((tdir / "rebo_train.reject_only.json").read_text())
    assert rows and all(r["solution"][0] == "<reject>" for r in rows)


@pytest.mark.slow
def test_run_rwku_with_seeds_reports_seed_means(tiny_model_path, tmp_path):
    """SEEDS=1,2: RS and ReBO once per seed (markers say the seed), Original evaluated once and shared, a rerun
    skips everything, and the table gives seed means with intervals."""
    env = _env(tmp_path, MODEL=tiny_model_path, INJECT=0, METHODS="rule_grpo", EXP="s", SEEDS="1,2")
    first = _run("run_rwku.sh", env)
    assert first.returncode == 0, first.stderr[-3000:]
    tdir = tmp_path / "rwku" / "s" / SAMPLE_TARGET
    assert sorted(p.stem for p in (tdir / "results").glob("*.json")) == ["original"]
    for k in (1, 2):
        _check_target(tdir / f"seed{k}", ["rs", "rule_grpo"], ["rs", "rule_grpo"])
        assert json.loads((tdir / f"seed{k}" / "rs" / ".done").read_text())["seed"] == k
        assert json.loads((tdir / f"seed{k}" / "rule_grpo" / ".done").read_text())["seed"] == k
    report = (tmp_path / "rwku" / "s" / "report" / "report.md").read_text()
    assert "mean over the 2 seeds (1, 2)" in report and " ± " in report and "| shared |" in report
    second = _run("run_rwku.sh", env)
    assert second.returncode == 0 and "] run  " not in second.stderr
