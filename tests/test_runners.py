"""The bash runner end to end on a tiny model and the sample target: every stage, the table, and a rerun that
skips everything already done."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, SAMPLE_TARGET


def _run(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "run_rwku.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_run_rwku_sandbox_pipeline_and_rerun_skips(tiny_model_path, tmp_path):
    env = {
        **os.environ,
        "MODEL": tiny_model_path, "INJECT": "1", "TARGETS": SAMPLE_TARGET, "METHODS": "rule_grpo ga",
        "LOG_DIR": str(tmp_path), "EXP": "t", "BUDGET": "test", "SUITES": "forget,neighbor",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    first = _run(env)
    assert first.returncode == 0, first.stderr[-3000:]
    exp = tmp_path / "rwku" / "t"
    tdir = exp / SAMPLE_TARGET
    for stage in ("inject", "rs", "rule_grpo", "ga"):
        assert (tdir / stage / ".done").is_file(), stage
    results = sorted(p.stem for p in (tdir / "results").glob("*.json"))
    assert results == ["base", "ga", "original", "rs", "rule_grpo"]
    report = (exp / "report" / "report.md").read_text()
    for label in ("Base (before injection)", "Original", "RS", "RULE (GRPO)", "GA"):
        assert label in report, label
    assert (tdir / "rule_grpo" / "curves.png").is_file()

    second = _run(env)  # everything done: only skips, then the report again
    assert second.returncode == 0, second.stderr[-3000:]
    assert "run  " not in second.stderr and "eval " not in second.stderr.replace("skip eval ", "")
    assert second.stderr.count("skip") == 4 + len(results)
