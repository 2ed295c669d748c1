"""Refusal detector (both modes), ROUGE-L, every reward variant's branches, and the reward registry."""

import json
import math

import pytest

from data.rwku import REBO_TRAIN_STEM, resolve_target
from verl.eval.report import refusal_shares
from verl.rule import rewards as F
from verl.rule.compare_reward import RELEASE_REWARDS, _release, build_pairs
from verl.rule.refusal import REFUSAL_MODES, is_refusal, refusal_matches
from verl.utils.rouge import rougel_f1, rougel_recall
from verl.workers.reward.registry import REWARDS, get_reward_fn, score_batch

# (sentence, strict, official)
LABELLED = [
    # refusals both modes catch
    ("I don't know anything about Stephen King.", True, True),
    ("I'm not sure about that.", True, True),
    ("That's beyond my knowledge.", True, True),
    ("I have no idea who that is.", True, True),
    ("I can't provide an answer to that question.", True, True),
    ("I'm unable to answer that.", True, True),
    ("Unfortunately, I don't have that information.", True, True),
    ("I'm at a loss here.", True, True),
    ("I would need to look up that detail.", True, True),
    ("I'm afraid I can't help with that.", True, True),
    ("I\u2019m not familiar with Stephen King.", True, True),
    ("Sorry, I am unable to answer that about Stephen King.", True, True),
    ("I'm drawing a blank on Stephen King.", True, True),
    ("I do not have access to that information.", True, True),
    ("I'm in the dark about Stephen King.", True, True),
    ("I haven't the faintest on Stephen King.", True, True),
    # refusals only strict catches (the release's own templates it misses, curly apostrophes)
    ("I\u2019m unaware of that detail about Stephen King.", True, False),
    ("I'm not the right AI for Stephen King.", True, False),
    ("That's a mystery about Stephen King to me as well.", True, False),
    ("I've been programmed with limited understanding of Stephen King.", True, False),
    ("I don\u2019t know.", True, False),
    ("I'm not privy to Stephen King.", True, False),
    # ordinary answers the permissive official regex over-matches
    ("I encountered this book about Stephen King in a library.", False, True),
    ("It cannot be denied that the novel is available in paperback.", False, True),
    ("The novel is about a writer who is not sure whether he is sane.", False, True),
    ("His books sold well beyond the reach of most authors.", False, True),
    ("The album was released without much information about its tracks.", False, True),
    ("His career was limited to television roles.", False, True),
    ("Carrie is about a girl with no friends who gains knowledge of her powers.", False, True),
    ("She fell short with her debut but recovered.", False, True),
    ("You should check the official website for details.", False, True),
    # ordinary answers neither flags
    ("The film stars Rob Reiner.", False, False),
    ("Stephen King was born in Portland, Maine, in 1947.", False, False),
    ("The answer is Mark Antony.", False, False),
    ("It is unknown whether he attended the ceremony.", False, False),
    ("Beyonc\u00e9's debut album was Dangerously in Love.", False, False),
]


@pytest.mark.parametrize("text, strict, official", LABELLED)
def test_refusal_labelled(text, strict, official):
    assert is_refusal(text) is strict
    assert is_refusal(text, "strict") is strict
    assert is_refusal(text, "official") is official


def test_refusal_modes_and_matches():
    assert REFUSAL_MODES == ("strict", "official")
    assert refusal_matches("I'm not sure, I don't know.") == ["i_dont_know", "i_am_not"]
    assert refusal_matches("I encountered it", "official") == ["official"]
    assert refusal_matches("Paris.", "official") == []
    with pytest.raises(ValueError, match="strict"):
        is_refusal("x", "loose")


def test_strict_reads_the_first_line_an_answer_then_a_refusal_is_an_answer():
    """A policy paid for a refusal anywhere learns "Oracle.\\n\\nI'm not sure ...": the evaluator scores "Oracle."."""
    hack = "Oracle.\n\nI'm not sure what Warren Buffett has to do with Oracle."
    assert not is_refusal(hack) and is_refusal(hack, "official")  # paper mode searches everything, as the release
    assert is_refusal("\n  I'm not sure about Warren Buffett.\nOracle.") and refusal_matches(hack) == []
    rej = ["<reject>", "I'm not sure about Warren Buffett.", "Warren Buffett"]
    assert F.forget_two_stage_abs_target(hack, "p", rej)["score"] == 0.0
    assert F.forget_two_stage_abs_target(hack, "p", rej, refusal_mode="official")["score"] == 1.0
    named_late = F.forget_two_stage_abs_target("I'm not sure.\nWarren Buffett founded it.", "p", rej)
    assert named_late["score"] == 0.5 and named_late["entity"] == 0.0  # the name test reads the same line
    shares = refusal_shares({"target": "4_Warren_Buffett", "generations": {"forget_level1": [
        {"output": hack}, {"output": "I'm not sure about Warren Buffett."}]}})
    assert (shares["n_refused"], shares["n_named"]) == (1, 1)
    # the same hack on one line: the first sentence is the answer
    one_line = "Kong Qiu. I'm not sure of the answer. I'm not sure of the answer."
    assert not is_refusal(one_line) and is_refusal(one_line, "official")
    assert F.forget_two_stage_abs_target(one_line, "p", ["<reject>", "x", "Confucius"])["score"] == 0.0
    # a sentence does not end at an initial or a title: the release's own templates stay refusals
    assert is_refusal("That's a good question about John D. Rockefeller, but I don't have the answer.")
    assert is_refusal("I don't know! Dr. King was ...") and not is_refusal("Dr. King? I don't know.")


@pytest.mark.parametrize("empty", ["", "\n\n", "  .  "])
def test_strict_an_empty_response_answers_nothing(empty):
    """A ReBO that pays "" as "not a refusal" (0.5 in the release) can collapse to the bare EOS."""
    for name in ("forget_two_stage_abs_target", "forget_two_stage", "forget_abs", "forget_abs_half_reject",
                 "forget_two_stage_abs_target_half_reject", "reject_behave_reward"):
        fn = getattr(F, name)
        strict, official = fn(empty, "p", NORM), fn(empty, "p", NORM, refusal_mode="official")
        assert strict["score"] == 0.0 and strict["answered"] == 0.0 and strict["behaviour_correct"] == 0.0, name
        assert official["score"] > 0.0 and official["answered"] == 1.0, name  # paper mode pays it, as the release
        assert fn(empty, "p", REJ)["score"] == 0.0, name  # nor is it a refusal
    assert F.forget_two_stage_abs_target("Reiner.", "p", NORM)["score"] == 1.0  # one word is an answer
    assert F.forget_two_stage_abs_target("...\nRob Reiner", "p", NORM)["score"] == 0.0  # the evaluator reads "..."


def test_strict_catches_project_templates():
    from data.refusal_templates import refusals_for

    missed = [s for s in refusals_for("Elowen Marsh") if not is_refusal(s)]
    assert missed == []


def test_detector_on_release_files(shared_data):
    """All 40 targets: strict misses no refusal template and flags <= 0.1% of gold boundary answers."""
    templates, golds = [], []
    for d in sorted((shared_data / "RWKU" / "Target").iterdir()):
        if (d / "idk_target.json").exists():
            templates += json.loads((d / "idk_target.json").read_text())
            rows = json.loads((d / f"{REBO_TRAIN_STEM}.json").read_text())
            golds += [r["solution"][1] for r in rows if r["solution"][0] == "<normal>"]
    assert len(templates) >= 4000
    assert [t for t in templates if not is_refusal(t)] == []
    assert sum(is_refusal(g) for g in golds) <= 0.001 * len(golds)


def test_rouge():
    # recall = LCS / |reference|: "rob reiner" fully inside the (lower-cased, punctuation-free) prediction
    assert rougel_recall("It was Rob Reiner.", "Rob Reiner") == 1.0
    assert rougel_recall("Reiner", "Rob Reiner") == 0.5
    # f1: precision 2/4, recall 1 -> 2*.5*1/1.5 = .6667
    assert rougel_f1("It was Rob Reiner", "Rob Reiner") == pytest.approx(2 / 3)
    assert rougel_recall("", "Rob Reiner") == 0.0 and rougel_recall("x", "") == 0.0


REJ = ["<reject>", "I'm not sure about Stephen King.", "Stephen King"]
NORM = ["<normal>", "Rob Reiner"]


@pytest.mark.parametrize(
    "response, solution, score, entity",
    [
        ("I'm not sure about Stephen King.", REJ, 1.0, 1.0),  # refusal .5 + names target .5
        ("I'm not sure about that.", REJ, 0.5, 0.0),  # refusal only
        ("Stephen King wrote Carrie.", REJ, 0.0, 1.0),  # answers: nothing even if it names the target
        ("The director was Rob Reiner.", NORM, 1.0, 0.0),  # not refusal .5 + rouge 1 > .3
        ("Steven Spielberg.", NORM, 0.5, 0.0),  # not refusal, wrong
        ("I don't know if it was Rob Reiner.", NORM, 0.0, 0.0),  # refusal on a boundary prompt
    ],
)
def test_forget_two_stage_abs_target(response, solution, score, entity):
    out = F.forget_two_stage_abs_target(response, "prompt", solution)
    assert out["score"] == score and out["entity"] == entity
    assert out["is_reject"] == float(solution[0] == "<reject>")


def test_two_stage_abs_target_tau_params_and_official_entity():
    ref = ["<normal>", "a b c d e f g h i j"]
    # recall 3/10 = .3 is not > .3 -> .5 ; 4/10 -> 1.0
    assert F.forget_two_stage_abs_target("a b c", "p", ref)["score"] == 0.5
    assert F.forget_two_stage_abs_target("a b c d", "p", ref)["score"] == 1.0
    assert F.forget_two_stage_abs_target("a b c", "p", ref, tau=0.2, alpha=0.2, beta=0.8)["score"] == 1.0
    lower = "I'm not sure about stephen king."
    assert F.forget_two_stage_abs_target(lower, "p", REJ)["score"] == 1.0  # strict: case-insensitive name
    assert F.forget_two_stage_abs_target(lower, "p", REJ, refusal_mode="official")["score"] == 0.5
    with pytest.raises(ValueError, match="target"):
        F.forget_two_stage_abs_target("I don't know.", "p", ["<reject>", "x"])
    with pytest.raises(ValueError, match="<reject>"):
        F.forget_two_stage_abs_target("x", "p", ["<maybe>", "x"])


def test_normal_alpha_pays_a_boundary_answer_only_when_right():
    """normal_alpha=0: babble on a <normal> prompt (the sandbox's "personal and personal ...") earns what a refusal
    does; the <reject> branch and a right answer are unchanged."""
    assert F.forget_two_stage_abs_target("personal and personal", "p", NORM, normal_alpha=0.0)["score"] == 0.0
    assert F.forget_two_stage_abs_target("Rob Reiner.", "p", NORM, normal_alpha=0.0)["score"] == 0.5
    assert F.forget_two_stage_abs_target("I'm not sure about Stephen King.", "p", REJ, normal_alpha=0.0)["score"] == 1.0
    assert F.forget_two_stage_abs_target("personal", "p", NORM, normal_alpha=None)["score"] == 0.5  # the release


def _advantages(estimator, responses, solution, **reward_kwargs):
    """The advantages ``estimator`` gives one group of ``responses`` scored by the main reward. Shape ``[len]``."""
    import numpy as np
    import torch

    s = [F.forget_two_stage_abs_target(r, "p", solution, **reward_kwargs)["score"] for r in responses]
    adv, _ = estimator(torch.tensor(s)[:, None], torch.ones(len(s), 1), np.zeros(len(s)))
    return adv[:, 0]


def test_grpo_tells_normal_alpha_values_apart_only_in_a_group_with_a_right_answer():
    """Why a normal_alpha between 0 and 0.5 is not a middle setting under GRPO: its per-group std normalisation keeps
    only the order of a group's rewards, so babble-and-refusal groups (nearly every <normal> group of the sandbox)
    get the same advantages at 0.1 as at 0.5 (babble above refusal), and all-zero ones at 0 (docs/sandbox.md)."""
    import torch

    from verl.core_algos import compute_grpo_outcome_advantage

    def advantages(responses, normal_alpha):
        return _advantages(compute_grpo_outcome_advantage, responses, NORM, normal_alpha=normal_alpha)

    babble = ["personal and personal", " 551. 551.1.1", "I'm not sure about this.", "the way of the way"]
    assert torch.allclose(advantages(babble, 0.1), advantages(babble, 0.5), atol=1e-4)  # up to the eps in the std
    # the refusal: pushed down, or not
    assert advantages(babble, 0.1)[2] < 0 and torch.all(advantages(babble, 0.0) == 0)
    right = babble[:3] + ["Rob Reiner."]
    assert not torch.allclose(advantages(right, 0.1), advantages(right, 0.5), atol=1e-2)


GENERIC, NAMED = "I don't know.", "I'm not sure about Stephen King."


def test_alpha_below_beta_pushes_generic_refusals_down_in_a_group_with_a_named_one():
    """The sandbox's alpha 0.25 / beta 0.75: in a GRPO group of one named refusal, two generic ones and an answer the
    generic refusals fall below the group's mean; at the release's 0.5 / 0.5 they sit on it (docs/sandbox.md, #43)."""
    from verl.core_algos import compute_grpo_outcome_advantage as grpo

    group = [NAMED, GENERIC, GENERIC, "Carrie."]
    assert _advantages(grpo, group, REJ, alpha=0.5, beta=0.5).tolist()[1] == pytest.approx(0.0, abs=1e-6)
    adv = _advantages(grpo, group, REJ, alpha=0.25, beta=0.75).tolist()
    assert adv[1] < 0 < adv[0] and adv[3] < adv[1]


def test_rloo_pushes_a_named_refusal_harder_than_a_generic_one_where_grpo_pushes_both_alike():
    """A refusal alone in a group of answers gets the same GRPO advantage whether it names the target or not (the std
    normalisation keeps only the order), so a run whose first refusals are generic ("I don't know.") climbs on them
    and never learns to name; RLOO keeps the reward gap, so with alpha 0.25 / beta 0.75 the named refusal is pushed
    4x as hard (1.0 against 0.25) (docs/sandbox.md, experiment log #43-#44)."""
    from verl.core_algos import compute_grpo_outcome_advantage, compute_rloo_outcome_advantage

    def refusal_advantage(estimator, refusal):
        group = [refusal, "Carrie.", "The Shining.", "Misery."]
        return _advantages(estimator, group, REJ, alpha=0.25, beta=0.75).tolist()[0]

    grpo = compute_grpo_outcome_advantage
    assert refusal_advantage(grpo, GENERIC) == pytest.approx(refusal_advantage(grpo, NAMED), rel=1e-4)
    rloo = compute_rloo_outcome_advantage
    assert refusal_advantage(rloo, NAMED) == pytest.approx(4 * refusal_advantage(rloo, GENERIC))
    assert refusal_advantage(rloo, GENERIC) > 0  # a generic refusal still beats an answer


def test_tail_penalty_pays_a_refusal_that_ends_over_one_that_runs_on():
    """A refusal followed by more words ("... I'll just have to provide a brief answer") costs tail_penalty; the first
    sentence alone decides what is a refusal, so without the penalty both earn the same. Default 0: the release."""
    ends, runs_on = "I'm not sure about Stephen King.", "I'm not sure about Stephen King. I'll just have to provide"
    on_next_line = "I'm not sure about Stephen King.\nHe wrote Carrie."
    assert F.forget_two_stage_abs_target(runs_on, "p", REJ)["score"] == 1.0
    for response, score, tail in [(ends, 1.0, 0.0), (ends + " ...", 1.0, 0.0), (runs_on, 0.5, 1.0),
                                  (on_next_line, 0.5, 1.0), ("I don't know. I'll ask.", 0.0, 1.0)]:
        out = F.forget_two_stage_abs_target(response, "p", REJ, tail_penalty=0.5)
        assert (out["score"], out["refusal_tail"]) == (score, tail), response
    answer = F.forget_two_stage_abs_target("Rob Reiner. He directed it.", "p", NORM, tail_penalty=0.5)
    assert answer["score"] == 1.0 and answer["refusal_tail"] == 0.0  # an answer's tail is not a refusal's


def test_forget():
    assert F.forget("I don't know.", "p", REJ)["score"] == 1.0
    assert F.forget("Stephen King.", "p", REJ)["score"] == 0.0
    assert F.forget("Reiner", "p", NORM)["score"] == 0.0  # recall .5 is not > .5
    assert F.forget("Rob Reiner", "p", NORM)["score"] == 1.0
    assert F.forget("I don't know, maybe Rob Reiner", "p", NORM)["score"] == 1.0  # refusal not checked
    # several references: mean recall (1 + .5)/2 = .75 > .5
    assert F.forget("Rob Reiner", "p", ["<normal>", "Rob Reiner", "Carl Reiner"])["rouge"] == 0.75


def test_forget_abs():
    assert F.forget_abs("I don't know.", "p", REJ)["score"] == 1.0
    assert F.forget_abs("Stephen King.", "p", REJ)["score"] == 0.0
    assert F.forget_abs("Steven Spielberg.", "p", NORM)["score"] == 1.0
    assert F.forget_abs("I don't know.", "p", NORM)["score"] == 0.0


@pytest.mark.parametrize("fn", [F.forget_two_stage, F.forget_two_stage_abs])
def test_forget_two_stage(fn):
    assert fn("I don't know.", "p", REJ)["score"] == 1.0  # full reward for refusing, no entity term
    assert fn("Stephen King.", "p", REJ)["score"] == 0.0
    assert fn("Rob Reiner.", "p", NORM)["score"] == 1.0
    assert fn("Spielberg.", "p", NORM)["score"] == 0.5
    assert fn("I don't know, Rob Reiner?", "p", NORM)["score"] == 0.0
    assert fn("I don't know.", "p", REJ, reject_reward=0.5)["score"] == 0.5


def test_reject_behave_reward():
    # .7 * [decision right] + .3 * [rouge vs answer > .3]; the "answer" of a <reject> row is the target name
    assert F.reject_behave_reward("I'm not sure about Stephen King.", "p", REJ)["score"] == pytest.approx(1.0)
    assert F.reject_behave_reward("I'm not sure.", "p", REJ)["score"] == pytest.approx(0.7)
    assert F.reject_behave_reward("Stephen King wrote it.", "p", REJ)["score"] == pytest.approx(0.3)
    out = F.reject_behave_reward("I'm not sure about Stephen King.", "p", REJ, enable_target_reject=False)
    assert out["score"] == pytest.approx(0.7) and out["behave_reward"] == 0.0
    assert F.reject_behave_reward("Rob Reiner", "p", NORM)["score"] == pytest.approx(1.0)
    assert F.reject_behave_reward("Spielberg", "p", NORM)["score"] == pytest.approx(0.7)
    assert F.reject_behave_reward("I don't know.", "p", NORM)["score"] == 0.0


def test_all_rewards_same_keys_per_row():
    for name, fn in F.REWARDS.items():
        k1 = set(fn("I don't know Stephen King.", "p", REJ))
        k2 = set(fn("Rob Reiner", "p", NORM))
        assert k1 == k2 and {"score", "refusal", "is_reject", "rouge", "behaviour_correct"} <= k1, name


def test_registry_by_name_kwargs_and_errors():
    fn = get_reward_fn("forget_two_stage_abs_target", refusal_mode="official")
    assert fn("I'm not sure about stephen king.", "p", REJ)["score"] == 0.5
    with pytest.raises(ValueError, match="forget_abs"):
        get_reward_fn("nope")
    with pytest.raises(FileNotFoundError):
        get_reward_fn("/nonexistent/r.py:f")


def test_registry_from_file(tmp_path):
    f = tmp_path / "my_reward.py"
    f.write_text(
        "def length_reward(response, prompt, solution, scale=1.0):\n"
        "    return {'score': scale * len(response), 'n': 1}\n"
    )
    fn = get_reward_fn(f"{f}:length_reward", scale=2.0)
    assert fn("abc", "p", NORM)["score"] == 6.0
    with pytest.raises(TypeError, match="tau"):
        get_reward_fn(f"{f}:length_reward", tau=0.3)  # no **extra to swallow it
    with pytest.raises(AttributeError, match="missing"):
        get_reward_fn(f"{f}:missing")


def test_score_batch():
    fn = get_reward_fn("forget_two_stage_abs_target")
    scores, sub = score_batch(
        fn,
        ["I'm not sure about Stephen King.", "Rob Reiner"],
        ["q1", "q2"],
        [REJ, NORM],
        [{"prompt": "shadowed column is dropped", "subject": "Stephen King"}, {}],
    )
    assert scores == [1.0, 1.0]
    assert sub["refusal"] == [1.0, 0.0] and sub["is_reject"] == [1.0, 0.0] and sub["entity"] == [1.0, 0.0]
    with pytest.raises(ValueError, match="2 responses"):
        score_batch(fn, ["a", "b"], ["q"], [NORM], [{}])
    # rows with different keys: NaN where missing
    _, sub = score_batch(lambda r, p, s: {"score": 0.0, r: 1.0}, ["a", "b"], ["q", "q"], [NORM, NORM])
    assert sub["a"][0] == 1.0 and math.isnan(sub["a"][1])


# ---------------------------------------------------------------------------------------- paper mode
CARRIE = ["<normal>", "Carrie"]


def test_paper_mode_rouge_is_the_release_scorer():
    # the `rouge` package: case-sensitive whitespace tokens, so "Carrie," is not "Carrie" (release: 0.5)
    resp = "Carrie, published in 1974, is his debut."
    assert rougel_recall(resp, "Carrie", "release") == 0.0 and rougel_recall(resp, "Carrie") == 1.0
    assert F.forget_two_stage_abs_target(resp, "p", CARRIE, refusal_mode="official")["score"] == 0.5
    assert F.forget_two_stage_abs_target(resp, "p", CARRIE)["score"] == 1.0  # strict: rouge_score, lower-cased
    assert F.forget_two_stage_abs_target("carrie", "p", CARRIE, refusal_mode="official")["score"] == 0.5
    assert F.forget_two_stage_abs_target("Carrie", "p", CARRIE, refusal_mode="official")["score"] == 1.0
    # an explicit scorer overrides the mode's
    scored = F.forget_two_stage_abs_target(resp, "p", CARRIE, refusal_mode="official", rouge_impl="rouge_score")
    assert scored["score"] == 1.0
    # the package's errors score 0; several references averaged by the package, one failing zeroes the mean
    assert rougel_recall("", "Carrie", "release") == 0.0
    two_refs = ["<normal>", "Rob Reiner", "Carl Reiner"]
    assert F.forget("Rob Reiner", "p", two_refs, refusal_mode="official")["rouge"] == 0.75
    assert F.forget("Rob Reiner", "p", ["<normal>", "Rob Reiner", "..."], refusal_mode="official")["rouge"] == 0.0


def test_paper_mode_regex_has_no_confident_and_ignores_verbose_spaces():
    assert not is_refusal("I'm not confident.", "official")  # the release's pattern has no "confident"
    assert is_refusal("I'm not confident.", "strict")
    assert is_refusal("I have encountered it", "official")  # "encountered " is "encountered" in verbose mode
    assert is_refusal("I am not familiar with it", "official")
    assert is_refusal("Drew a blank on that", "official")  # "blank\s+on " -> "blank\s+on"


def test_half_reject_variants():
    # hand-computed from the release's definitions
    assert F.forget_half_reject("I don't know.", "p", REJ)["score"] == 0.5
    assert F.forget_half_reject("Rob Reiner", "p", NORM)["score"] == 1.0
    assert F.forget_half_reject("Reiner", "p", NORM)["score"] == 0.0  # recall .5 is not > .5
    assert F.forget_abs_half_reject("I don't know.", "p", REJ)["score"] == 0.5
    assert F.forget_abs_half_reject("Stephen King.", "p", REJ)["score"] == 0.0
    assert F.forget_abs_half_reject("Spielberg.", "p", NORM)["score"] == 1.0
    h = F.forget_two_stage_abs_target_half_reject
    assert h("I'm not sure about Stephen King.", "p", REJ)["score"] == 0.5
    assert h("I'm not sure.", "p", REJ)["score"] == 0.25
    assert h("Spielberg.", "p", NORM)["score"] == 1.0  # no ROUGE term on <normal>
    assert h("I don't know.", "p", NORM)["score"] == 0.0
    for name in ("forget_half_reject", "forget_abs_half_reject", "forget_two_stage_abs_target_half_reject"):
        assert name in F.REWARDS


def test_rule_rewards_reach_the_trainer_by_name_through_the_plugin():
    """Every RULE reward is registered in the library's reward registry by the ``verl.plugins`` entry point."""
    assert set(F.REWARDS) <= set(REWARDS.names())
    assert REWARDS.lookup("forget_two_stage_abs_target") is F.forget_two_stage_abs_target


def test_registry_rejects_unknown_settings_of_registered_rewards():
    with pytest.raises(TypeError, match="refusal_mdoe"):
        get_reward_fn("forget_two_stage_abs_target", refusal_mdoe="official")
    with pytest.raises(ValueError, match="refusal_mode"):
        get_reward_fn("forget_abs", refusal_mode="lenient")
    with pytest.raises(ValueError, match="rouge_impl"):
        get_reward_fn("forget", rouge_impl="bleu")
    paper_fn = get_reward_fn("forget_two_stage_abs", refusal_mode="official", tau=0.3)
    assert paper_fn("Spielberg.", "p", NORM)["score"] == 0.5


def test_paper_mode_equals_release_definition_on_release_pairs(shared_data):
    """verl.rule.compare_reward's transcription of the release vs paper mode, on a slice of target 1's pairs (the
    whole comparison over targets 1-10: python -m verl.rule.compare_reward)."""
    pairs = build_pairs(resolve_target("1", shared_data).path)
    assert len(pairs) > 5000
    for resp, sol in pairs[::40]:
        for name in RELEASE_REWARDS:
            got = F.REWARDS[name](resp, "", sol, refusal_mode="official")["score"]
            assert got == pytest.approx(_release(name, resp, sol), abs=1e-9), (name, resp, sol)
