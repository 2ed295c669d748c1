"""scripts/gpu_check.sh at tiny sizes on the CPU: the GPU check's code runs before a GPU ever does."""

from __future__ import annotations

import json
import os
import subprocess

from tests.conftest import REPO


def test_gpu_check_runs_on_the_cpu_and_writes_its_summary(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("RULE_CACHE_DIR", str(tmp_path / "cache"))
    proc = subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh"), "--device", "cpu", "--quick", "--out",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("[")]
    assert [x.split()[1] for x in lines] == ["rollout:", "trainer:", "resume:", "memory:"]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["ok"] and summary["device"] == "cpu" and summary["quick"]
    checks = summary["checks"]
    assert checks["rollout"]["tokens_per_s"] > 0
    assert checks["trainer"]["steps"] == 2
    assert {"gen", "ref", "update_actor", "save"} <= set(checks["trainer"]["phases"])
    assert checks["resume"]["relative_diff"] and max(checks["resume"]["relative_diff"].values()) <= 1e-5
    mem = checks["memory"]
    assert mem["ref_pass"]["predicted_gb"] > 0 and mem["update"]["predicted_gb"] > 0
    assert mem["measured"] is False and mem["update"]["measured_gb"] is None  # no CUDA: predicted only
