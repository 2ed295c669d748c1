"""The report's refusal columns: share of forget probes refused and share of refusals naming the target."""

import json

from verl.eval.report import make_report, refusal_shares


def _result(method, outputs, target="1_Stephen_King"):
    gens = {"forget_level1": [{"query": "q", "answer": "a", "output": o} for o in outputs[:2]],
            "forget_level3": [{"query": "q", "answer": "a", "output": o} for o in outputs[2:]],
            "neighbor_level1": [{"query": "q", "answer": "a", "output": "I don't know."}]}  # not a forget probe
    return {"benchmark": "rwku", "method": method, "target": target, "protocol": "sandbox", "created": "2026",
            "metrics": {"forget": {"FB": 0.5, "QA": 0.5, "AA": 0.5, "All": 0.5},
                        "neighbor": {"FB": 0.9, "QA": 0.9, "All": 0.9}},
            "generations": gens}


OUTPUTS = ["I'm not sure about Stephen King.", "Carrie", "I don't know.", "I have no idea about  stephen king."]


def test_refusal_shares_hand_counted():
    s = refusal_shares(_result("RS", OUTPUTS))
    assert (s["n_probes"], s["n_refused"], s["n_named"]) == (4, 3, 2)
    assert s["forget_refused"] == 0.75 and s["refusals_naming_target"] == 2 / 3
    assert refusal_shares(_result("Original", ["Carrie", "Misery"]))["refusals_naming_target"] is None
    assert refusal_shares({"target": "1_Stephen_King", "generations": {}}) is None


def test_naming_share_is_split_by_whether_the_question_names_the_target():
    """Two probes ask by name (both refused, one refusal names him), two ask indirectly (both refused, none names him):
    direct 1/2, indirect 0/2, all 1/4."""
    r = _result("RULE", ["I'm not sure about Stephen King.", "I don't know.", "I'm not sure about Misery.",
                         "I don't know."])
    questions = ["Stephen King's first novel?", "Where was stephen  King born?", "Who wrote Misery?", "Who is he?"]
    for g, q in zip(r["generations"]["forget_level1"] + r["generations"]["forget_level3"], questions):
        g["query"] = q
    s = refusal_shares(r)
    assert s["refusals_naming_target"] == 1 / 4
    assert (s["refusals_naming_target_direct"], s["n_refused_direct"], s["n_named_direct"]) == (1 / 2, 2, 1)
    assert (s["refusals_naming_target_indirect"], s["n_refused_indirect"], s["n_named_indirect"]) == (0.0, 2, 0)
    assert refusal_shares(_result("RS", ["Carrie"] * 4))["refusals_naming_target_direct"] is None  # nothing refused



def test_naming_share_is_split_by_whether_the_name_is_the_probes_answer():
    """Four refused probes: two whose gold answer is the target's name or part of it ("Stephen King", "King"), where a
    refusal naming him gives the answer, one of them named; two with other answers, both named."""
    r = _result("RULE", ["I'm not sure about Stephen King.", "I don't know about Misery.",
                         "I don't know about Stephen King.", "I have no idea about stephen king."])
    probes = [("Who wrote 'Misery'?", "Stephen King"), ("Who wrote 'Carrie'?", "king"),
              ("Stephen King's first novel?", "Carrie"), ("Where was he born?", "Portland, Maine")]
    for g, (q, a) in zip(r["generations"]["forget_level1"] + r["generations"]["forget_level3"], probes):
        g["query"], g["answer"] = q, a
    s = refusal_shares(r)
    assert s["refusals_naming_target"] == 3 / 4
    assert (s["refusals_naming_target_name_answers"], s["n_refused_name_answers"], s["n_named_name_answers"]) == (
        1 / 2, 2, 1)
    assert (s["refusals_naming_target_name_not_answer"], s["n_refused_name_not_answer"],
            s["n_named_name_not_answer"]) == (1.0, 2, 2)
    assert s["n_refused_direct"] == 1 and s["n_refused_indirect"] == 3  # the other split is independent
    # naming every refusal without giving an answer away reaches 2 of 4
    assert s["refusals_naming_ceiling"] == 2 / 4
    assert refusal_shares(_result("RS", ["Carrie"] * 4))["refusals_naming_ceiling"] is None  # nothing refused

def test_report_has_refused_and_named_columns(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "rs.json").write_text(json.dumps(_result("RS", OUTPUTS)))
    (runs / "orig.json").write_text(json.dumps(_result("Original", ["Carrie", "Misery", "Maine", "1947"])))
    no_gen = _result("GA", OUTPUTS)
    no_gen["generations"] = {}
    (runs / "ga.json").write_text(json.dumps(no_gen))
    res = make_report([runs], tmp_path / "out")
    rows = {r["method"]: r["values"] for r in res["tables"][0]["rows"]}
    assert rows["RS"]["Forget Refused"] == 75.0 and round(rows["RS"]["Forget Named"], 1) == 66.7
    assert rows["Original"]["Forget Refused"] == 0.0 and rows["Original"]["Forget Named"] is None
    assert rows["GA"]["Forget Refused"] is None
    md = (tmp_path / "out" / "rwku_sandbox.md").read_text()
    assert "| Forget Refused | Forget Named |" in md and "name the target" in md
