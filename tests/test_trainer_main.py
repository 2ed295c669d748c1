"""``python -m verl.trainer.main`` stopped by SIGTERM (the pipeline stopping a stage, a scheduler's preemption): it
closes like a normal end and exits 143; a missing config file is a one-line error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.test_cli_errors import exit_of
from tests.test_trainer_loop import REWARD_SRC, tiny_overrides


def _logged_steps(metrics) -> list[int]:
    if not metrics.is_file():
        return []
    steps = []
    for line in metrics.read_text().splitlines():
        try:
            steps.append(json.loads(line).get("step", 0))
        except json.JSONDecodeError:  # a line being written
            pass
    return steps


def test_sigterm_after_a_step_closes_the_run_like_a_normal_end(tiny_model_path, tmp_path, shared_data):
    from verl.utils.checkpoint import CheckpointManager
    from verl.utils.runlock import RunDirLock

    reward = tmp_path / "reward.py"
    reward.write_text(REWARD_SRC)
    run = tmp_path / "run"
    argv = tiny_overrides(tiny_model_path, run, f"{reward}:letter_e",
                          **{"trainer.total_steps": 200, "trainer.save_freq": 1, "trainer.save_limit": 2})
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "verl.trainer.main", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        metrics = run / "metrics.jsonl"
        while time.time() < deadline and proc.poll() is None and max(_logged_steps(metrics), default=0) < 1:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert any(s >= 1 for s in _logged_steps(run / "metrics.jsonl")), "no step logged within 240 s"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]  # not -15: the process ended through its own cleanup
    assert "SIGTERM: stopping" in err
    assert (run / "curves.md").is_file()  # written by trainer.close()
    RunDirLock(run, "test").acquire().release()  # the run dir is free
    leftovers = [p for p in run.rglob("*") if p.name.startswith(".tmp-") or p.name.endswith(".tmp")]
    assert leftovers == []
    latest = CheckpointManager(run).latest()
    assert latest is not None and CheckpointManager.resumable(latest)  # a resume picks up where it stopped
    assert int(latest.name.rpartition("_")[2]) < 200


@pytest.mark.parametrize("handler_before", [signal.SIG_DFL, signal.SIG_IGN])
def test_run_puts_the_previous_sigterm_handler_back(monkeypatch, handler_before):
    from verl.config import load_config
    from verl.trainer import main as main_mod

    class Trainer:
        def __init__(self, config):
            assert signal.getsignal(signal.SIGTERM) is main_mod._exit_on_sigterm

        def fit(self):
            return []

        def close(self):
            pass

    monkeypatch.setattr("verl.trainer.main.RayPPOTrainer", Trainer)
    previous = signal.signal(signal.SIGTERM, handler_before)
    try:
        assert main_mod.run(load_config(None, [])) == []
        assert signal.getsignal(signal.SIGTERM) is handler_before
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_missing_config_file_is_one_line(capsys):
    from verl.trainer.main import main

    assert exit_of(main, ["config=/missing.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: config file /missing.yaml does not exist (config=FILE.yaml; see examples/)"
