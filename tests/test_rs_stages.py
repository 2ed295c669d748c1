"""Every RS stage runs one optimizer step on the tiny model and writes a loadable checkpoint."""

import json

import pytest

from RS.args import TrainArgs
from RS.stages import STAGES


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_runs_one_step(stage, tiny_model_path, target_name, tmp_path):
    from transformers import AutoModelForCausalLM

    from RS.train import train

    args = TrainArgs(stage=stage, model_name_or_path=tiny_model_path, target=target_name, output_dir=str(tmp_path),
                     max_samples=2, per_device_train_batch_size=2, cutoff_len=48, max_steps=1, warmup_steps=0,
                     learning_rate=1e-4, save_strategy="no", plot_loss=False, eval_probes=False,
                     inject_passages=False, retain_num_targets=1, overwrite_output_dir=True)
    out = train(args)
    done = json.loads((out / "DONE").read_text())
    assert done["global_step"] == 1 and done["stage"] == stage
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert "loss" in rows[-1]
    if STAGES[stage].retain:
        assert "retain" in rows[-1]
    AutoModelForCausalLM.from_pretrained(out)


def test_rwku_rt_and_rs_differ_only_in_answers(tiny_model_path, target_name):
    from transformers import AutoTokenizer

    from RS.datasets import build_data

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    kw = dict(model_name_or_path=tiny_model_path, target=target_name, output_dir="u", max_samples=5, cutoff_len=64)
    rs = build_data(TrainArgs(dataset="reject_target", **kw), tok, STAGES["rt"])
    rt = build_data(TrainArgs(dataset="rwku_rt", **kw), tok, STAGES["rt"])
    name = target_name.split("_", 1)[1].replace("_", " ")
    rs_text = " ".join(tok.decode(e["input_ids"][-20:]) for e in rs.train)
    rt_resp = " ".join(tok.decode([t for t, lab in zip(e["input_ids"], e["labels"]) if lab != -100]) for e in rt.train)
    assert name.split()[-1] in rs_text and name.split()[-1] not in rt_resp



@pytest.mark.parametrize("dataset", ["reject_target", "rwku_rt"])
def test_prompt_form_both_shows_each_question_in_chat_and_probe_form(dataset, tiny_model_path, target_name):
    """--prompt_form both (the sandbox): every refusal pair twice, once as a bare chat turn and once in the
    evaluator's probe wrapper with the same refusal after "Answer:"; rwku alone keeps only the wrapped copy."""
    from transformers import AutoTokenizer

    from data.rwku import resolve_target
    from RS.args import validate_args
    from RS.datasets import build_data
    from verl.rule.prompts import build_prompt

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    kw = dict(model_name_or_path=tiny_model_path, target=target_name, output_dir="u", max_samples=3, cutoff_len=256,
              dataset=dataset)
    chat = build_data(TrainArgs(**kw), tok, STAGES["rt"])
    both = build_data(TrainArgs(prompt_form="both", **kw), tok, STAGES["rt"])
    rwku = build_data(TrainArgs(prompt_form="rwku", **kw), tok, STAGES["rt"])
    assert len(chat.train) == len(rwku.train) == 3 and len(both.train) == 6

    def split(e):
        prompt = tok.decode([t for t, lab in zip(e["input_ids"], e["labels"]) if lab == -100])
        return prompt, tok.decode([t for t in e["labels"] if t != -100]).strip()

    questions = [r["instruction"] for r in resolve_target(target_name).load("reject_target")]
    wrapped = {build_prompt({"query": q}, "FB" if "___" in q else "QA", tok) for q in questions}
    assert all(split(e)[0] in wrapped for e in rwku.train)
    assert not any(split(e)[0] in wrapped for e in chat.train)
    assert [split(e) for e in both.train[0::2]] == [split(e) for e in chat.train]  # chat copy, then wrapped copy
    assert [split(e) for e in both.train[1::2]] == [split(e) for e in rwku.train]
    assert [split(e)[1] for e in rwku.train] == [split(e)[1] for e in chat.train]  # same refusal either way
    with pytest.raises(ValueError, match="--prompt_form"):
        validate_args(TrainArgs(prompt_form="alpaca", **kw))


def test_refusal_stop_ends_rs_at_the_first_check_that_reaches_the_share(tiny_model_path, target_name, tmp_path,
                                                                        monkeypatch):
    """--refusal_stop: held-out reject_target questions (never trained on, written to heldout.json) are asked in the
    probe wrapper every --refusal_check_steps steps; RS ends at the first check whose refused share reaches it."""
    from transformers import AutoTokenizer

    from RS import refusal_stop
    from RS.args import validate_args
    from RS.train import train
    from verl.rule.prompts import build_prompt

    shares = iter([0.0, 0.25, 0.75, 1.0])
    seen = []

    def fake_share(model, tokenizer, prompts, batch_size=16):
        seen.append(list(prompts))
        share = next(shares)
        return share, [f"answer {share}"] * len(prompts)

    monkeypatch.setattr(refusal_stop, "refusal_share", fake_share)
    args = TrainArgs(stage="rt", dataset="reject_target", model_name_or_path=tiny_model_path, target=target_name,
                     output_dir=str(tmp_path), max_samples=10, per_device_train_batch_size=2, cutoff_len=48,
                     max_steps=20, warmup_steps=0, learning_rate=1e-4, save_strategy="no", plot_loss=False,
                     refusal_stop=0.7, refusal_holdout=3, refusal_check_steps=2, refusal_stop_after=3,
                     overwrite_output_dir=True)
    out = train(args)
    done = json.loads((out / "DONE").read_text())
    assert done["global_step"] == 9 and done["refusal_stop"]["step"] == 6  # reached at 6, + 3 steps, no more checks
    assert done["refusal_stop"]["refusal_share"] == 0.75
    checks = [json.loads(line) for line in (out / "refusal_checks.jsonl").read_text().splitlines()]
    assert [c["step"] for c in checks] == [2, 4, 6] and checks[-1]["answers"] == ["answer 0.75"] * 3
    heldout = json.loads((out / "heldout.json").read_text())
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    level = {r["instruction"]: "FB" if "___" in r["instruction"] else "QA" for r in heldout}
    assert len(heldout) == 3 and seen[0] == [build_prompt({"query": q}, lv, tok) for q, lv in level.items()]
    info = json.loads((out / "run_info.json").read_text())
    assert info["n_train"] == 7  # 10 records, 3 held out for the check
    for bad, match in ((dict(refusal_stop=1.5), "--refusal_stop"),
                       (dict(refusal_stop=0.5, dataset="passage"), "rwku_rt"),
                       (dict(refusal_stop_after=-1), "refusal_stop_after")):
        with pytest.raises(ValueError, match=match):
            validate_args(TrainArgs(**{**vars(args), **bad}))


def test_every_training_stage_is_a_pipeline_method_and_back():
    """The pipeline's method table (names, rows, configs) and RS's stage table (losses) name the same stages: a
    stage added to one is missing from METHODS or from RS.train until added to the other (inject is stage 0)."""
    from verl.pipeline.methods import METHODS

    used = {m.stage for m in METHODS.values() if m.kind == "rs-stage"}
    assert used <= set(STAGES)
    assert set(STAGES) - used == {"inject"}
