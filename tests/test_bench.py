"""``python -m verl.bench``: the table, the method timer, and both commands at tiny sizes."""

import json

import pytest

from verl import bench


def test_table_aligns_and_formats():
    out = bench.table(["engine", "tokens/s"], [["hf", 12.345], ["vllm", None]]).splitlines()
    assert out[0].split() == ["engine", "tokens/s"] and set(out[1]) <= {"-", " "}
    assert out[2].split() == ["hf", "12.35"] and out[3].split() == ["vllm", "-"]
    assert len({len(line) for line in out}) == 1


def test_method_timer_records_and_restores():
    class Engine:
        def sync_weights(self, x):
            return x + 1

    original = Engine.__dict__["sync_weights"]
    record = {}
    with bench.method_timer(Engine, ("sync_weights", "missing"), record):
        assert Engine().sync_weights(1) == 2
        assert Engine().sync_weights(2) == 3
    assert set(record) == {"sync_weights"} and record["sync_weights"] >= 0
    assert Engine.__dict__["sync_weights"] is original


def _tiny(tiny_model_path):
    return [f"worker.actor.model_path={tiny_model_path}", "data.rollout_batch_size=2",
            "worker.actor.global_batch_size=2", "worker.rollout.n=2", "data.max_response_length=4",
            "worker.actor.micro_batch_size_per_device_for_update=4"]


@pytest.mark.slow
def test_step_and_rollout_commands(tiny_model_path, shared_data, tmp_path, capsys):
    out = tmp_path / "step.json"
    bench.main(["step", "--steps", "1", "--json", str(out), *_tiny(tiny_model_path)])
    text = capsys.readouterr().out
    assert "update_actor s" in text and "ref s" in text and "step 1" in text
    steps = json.loads(out.read_text())["steps"]
    assert len(steps) == 1 and steps[0]["timing/update_actor"] > 0 and steps[0]["timing/gen"] > 0
    out = tmp_path / "rollout.json"
    bench.main(["rollout", "--engines", "hf", "--prompts", "2", "--max-new-tokens", "3", "--batch", "2",
                "--json", str(out), f"worker.actor.model_path={tiny_model_path}"])
    res = json.loads(out.read_text())["results"]
    assert [r["engine"] for r in res] == ["hf"] and res[0]["tokens"] > 0 and res[0]["identical_to_hf"] == "2/2"
    assert "tokens/s" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_command_times_both_ways_and_compares(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "eval.json"
    bench.main(["eval", "--model", f"a:A={tiny_model_path}", "--model", f"b:B={tiny_model_path}", "--target",
                "101_Elowen_Marsh", "--suites", "forget", "--json", str(out), "--", "--engine", "hf", "--limit", "1"])
    res = json.loads(out.read_text())
    assert res["equal"] == res["compared"] == 2 and res["results"][0]["separate_s"] > 0
    assert "one process s" in capsys.readouterr().out
