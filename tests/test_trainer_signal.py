"""The trainer logs the share of prompt groups with a learning signal and can stop when it stays near 0."""

from __future__ import annotations

import json

from tests.test_trainer_loop import fit, tiny_overrides
from verl.utils.checkpoint import CheckpointManager

CONSTANT = "def constant(response, prompt, solution, **extra):\n    return {'score': 1.0}\n"


def test_constant_reward_warns_and_stops_with_a_checkpoint(tiny_model_path, tmp_path, shared_data, caplog):
    reward = tmp_path / "constant_reward.py"
    reward.write_text(CONSTANT)
    run = tmp_path / "run"
    ov = tiny_overrides(tiny_model_path, run, f"{reward}:constant",
                        **{"trainer.total_steps": 4, "trainer.signal_stop_steps": 2})
    with caplog.at_level("WARNING", logger="verl.trainer"):
        history, _ = fit(ov)
    assert [h["reward/signal_share"] for h in history] == [0.0, 0.0]  # every group: identical rewards
    assert [h["trainer/low_signal_steps"] for h in history] == [1.0, 2.0]
    assert history[-1]["trainer/stopped_no_signal"] == 1.0 and len(history) == 2
    assert "little or no learning signal" in caplog.text and "stopping early" in caplog.text
    assert CheckpointManager(run).latest().name == "global_step_2"  # saved as at the end
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["reward/signal_share"] == 0.0


LABELLED = ("def by_label(response, prompt, solution, **extra):\n"
            "    refused = float(solution[0] == '<reject>')\n"
            "    return {'score': refused + len(response) % 2, 'refusal': refused}\n")


def test_refusals_are_logged_per_label(tiny_model_path, tmp_path, shared_data):
    reward = tmp_path / "by_label.py"
    reward.write_text(LABELLED)
    ov = tiny_overrides(tiny_model_path, tmp_path / "run", f"{reward}:by_label", **{"data.stratify_labels": "true"})
    history, _ = fit(ov)
    assert [(h["reward/refusal_reject"], h["reward/refusal_normal"]) for h in history] == [(1.0, 0.0)] * 2
    assert all(h["reward/refusal"] == 0.5 for h in history)  # 1 <reject> + 1 <normal> prompt a step
