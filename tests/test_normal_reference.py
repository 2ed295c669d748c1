"""``data.normal_reference=policy``: ``<normal>`` rows are scored against the initial policy's greedy answer, written
before step 1 and read back on resume."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.test_trainer_loop import fit, tiny_overrides
from verl.config import load_config
from verl.utils.cli import ConfigError, UserError

# records what the reward was handed; its score varies between rollouts so that the updates are real
RECORDER = '''
import json
def record(response, prompt, solution, **extra):
    with open({log!r}, "a") as f:
        f.write(json.dumps([prompt, list(solution)]) + "\\n")
    return {{"score": float(len(response) % 3)}}
'''


def _calls(log) -> list[tuple[str, list[str]]]:
    return [tuple(json.loads(x)) for x in log.read_text().splitlines()]


def test_normal_rows_are_scored_against_the_initial_policys_answer(tiny_model_path, tmp_path, shared_data):
    log = tmp_path / "solutions.jsonl"
    reward = tmp_path / "record.py"
    reward.write_text(RECORDER.format(log=str(log)))
    run = tmp_path / "run"
    extra = {"data.stratify_labels": "true", "data.normal_reference": "policy", "trainer.save_freq": 1,
             "trainer.save_limit": 5, "trainer.resume_state": "all",  # step 1 stays resumable
             "trainer.keep_resume_state": "true"}  # and the last step: the run is extended below
    _, trainer = fit(tiny_overrides(tiny_model_path, run, f"{reward}:record", **extra))
    gold = {r["prompt"]: r["solution"] for r in trainer.train_ds.rows}
    refs = json.loads((run / "normal_references.json").read_text())
    calls = _calls(log)
    normal = [(p, s) for p, s in calls if s[0] == "<normal>"]
    # 2 prompts a step, stratified: 1 <normal> prompt x n=2 rollouts per step, 2 steps
    assert len(normal) == 4 and {p for p, _ in normal} == set(refs) and len(refs) == 2
    for p, s in normal:
        assert s == (["<normal>", refs[p]] if refs[p] else gold[p])
        assert refs[p] is None or refs[p] != gold[p][1]  # the tiny random model's answer, not the file's
    assert all(s == gold[p] for p, s in calls if s[0] == "<reject>")  # forget rows untouched

    # resumed after step 1: the saved answers are used (the policy is no longer the initial one)
    shutil.rmtree(run / "checkpoints" / "global_step_2")
    log.unlink()
    _, resumed = fit(tiny_overrides(tiny_model_path, run, f"{reward}:record", **extra))
    assert resumed.global_step == 2 and resumed.normal_refs == refs
    assert [c for c in _calls(log) if c[1][0] == "<normal>"] == normal[2:]

    # more steps than the saved answers cover: refused before any work, with what to do
    with pytest.raises(UserError, match=r"lacks the initial policy's answer to \d+ <normal> prompts.*resume=none"):
        fit(tiny_overrides(tiny_model_path, run, f"{reward}:record", **{**extra, "trainer.total_steps": 6}))


def test_normal_reference_rejects_unknown_values():
    with pytest.raises(ConfigError, match="data.normal_reference='ref'"):
        load_config(None, ["data.normal_reference=ref"]).resolve()
