"""The boundary suite in the evaluator (verl/eval/boundary.py) and its report columns."""

from __future__ import annotations

import json

import pytest

from data.boundary import boundary_split
from data.rwku import Target, resolve_target
from verl.eval import boundary
from verl.eval.report import build_table, rwku_columns
from verl.rule.prompts import build_prompt

SAMPLE = "101_Elowen_Marsh"


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


ROWS = [{"query": "What is J.K. Rowling's debut novel?", "answer": "Harry Potter and the Philosopher's Stone",
         "row": 2, "group": 0},
        {"query": "Ernest Hemingway's debut novel is titled ___.", "answer": "The Sun Also Rises",
         "row": 3, "group": 0}]


def test_scores_on_fixed_generations():
    outputs = [" Harry Potter and the Philosopher's Stone", "\nI'm not sure about Ernest Hemingway.\nThe Sun"]
    m, gens = boundary.score_boundary(ROWS, outputs)
    # recall of the gold answer's words in the whole output, as the probes: 1.0 and 2 of 4 ("the sun")
    assert m["Answer"] == pytest.approx(0.5 * (1.0 + 0.5)) and m["Refused"] == 0.5 and m["n"] == 2
    assert m["corrected"]["Answer"] == pytest.approx(0.5)  # the first line holds no part of the second answer
    assert [g["refused"] for g in gens] == [False, True] and [g["level"] for g in gens] == ["QA", "FB"]
    assert gens[1]["output"] == "I'm not sure about Ernest Hemingway.\nThe Sun" and gens[0]["row"] == 2
    m, _ = boundary.score_boundary(ROWS, ["The Sun Also Rises. I don't know.", "The Sun Also Rises"])
    assert m["Refused"] == 0.0 and m["Answer"] == pytest.approx(0.5)  # an answer then a refusal is an answer


def test_suite_asks_the_held_out_rows_in_the_probe_wrapper(monkeypatch, tok):
    seen = {}

    def fake_generate(model, t, prompts, max_new_tokens, stop_strings, info=None, **kw):
        seen.update(prompts=prompts, n=max_new_tokens, stops=stop_strings, special=kw.get("add_special_tokens"))
        info.extend({"n_tokens": 3, "eos": True} for _ in prompts)
        return ["I'm not sure." for _ in prompts]

    monkeypatch.setattr(boundary, "generate", fake_generate)
    split = boundary_split(SAMPLE)
    m, gens = boundary.evaluate_boundary(None, tok, SAMPLE)
    expected = [build_prompt({"query": s["query"]}, "FB" if "___" in s["query"] else "QA", tok)
                for s in split.suite]
    assert seen == {"prompts": expected, "n": 30, "stops": (), "special": True}
    assert any("Please complete the blank" in p for p in expected) and any("briefly answer" in p for p in expected)
    assert m["n"] == len(split.suite) and m["Refused"] == 1.0 and m["split"]["sha256"] == split.sha256
    assert [g["query"] for g in gens] == [s["query"] for s in split.suite] and gens[0]["eos"] is True
    m, gens = boundary.evaluate_boundary(None, tok, SAMPLE, limit=2)
    assert m["n"] == 2 == len(gens)


def test_empty_suite_is_skipped_with_its_reason(tmp_path, tok):
    t = Target(id=999, name="Nobody", folder="999_Nobody", path=tmp_path)
    m, gens = boundary.evaluate_boundary(None, tok, t)
    assert gens == [] and m["n"] == 0 and "no rl_rejection" in m["skipped"] and "Answer" not in m


def test_cli_runs_the_boundary_suite(tiny_model_path, tmp_path):
    from verl.eval.cli import main

    out = tmp_path / "res.json"
    main(["--benchmark", "rwku", "--model_path", tiny_model_path, "--target", SAMPLE, "--suites", "boundary",
          "--output", str(out), "--engine", "hf", "--batch_size", "8", "--method", "tiny"])
    res = json.loads(out.read_text())
    m = res["metrics"]["boundary"]
    assert m["n"] == len(boundary_split(resolve_target(SAMPLE)).suite) == len(res["generations"]["boundary"])
    assert 0 <= m["Answer"] <= 1 and 0 <= m["Refused"] <= 1
    assert {"eos", "n_tokens", "tail_tokens", "refused", "score"} <= set(res["generations"]["boundary"][0])


def test_report_columns_follow_neighbor_all_and_forget_named():
    labels = [c.label for c in rwku_columns()]
    i = labels.index("Neighbor All")
    assert labels[i + 1 : i + 3] == ["Boundary Answer", "Boundary Refused"]
    j = labels.index("Forget Named")
    assert labels[j + 1] == "Refusal Ends"
    result = {"benchmark": "rwku", "protocol": "sandbox", "method": "Original", "target": "1_Stephen_King",
              "metrics": {"boundary": {"Answer": 0.8, "Refused": 0.05, "n": 20},
                          "refusal": {"forget_refused": 0.5, "refusals_naming_target": 1.0, "refusals_ending": 0.25}}}
    row = build_table([result], "rwku", "sandbox").rows[0]["values"]
    assert row["Boundary Answer"] == pytest.approx(80.0) and row["Boundary Refused"] == pytest.approx(5.0)
    assert row["Refusal Ends"] == pytest.approx(25.0) and row["Neighbor All"] is None
