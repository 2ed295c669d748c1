"""The offline template generator: readable questions from passages, boundary facts about similar entities, no
probes."""

from __future__ import annotations

import pytest

from data.generators.base import Unit
from data.generators.template_gen import (
    TemplateGenerator,
    base_form,
    clean_passage,
    extract_facts,
    passage_facts,
    question_problems,
    sentences,
)
from data.rwku import PROBE_FILES, Target, resolve_target


def _qa(sentence: str, name: str = "Ada Stone") -> dict[str, tuple[str, str]]:
    return {f.pattern: (f.question, f.answer) for f in extract_facts(sentence, name)}


def test_patterns_on_hand_written_sentences():
    assert _qa("Ada Stone (born May 5, 1989) is an American singer and actor.") == {
        "born": ("When was Ada Stone born?", "May 5, 1989"),
        "who_is": ("Who is Ada Stone?", "an American singer and actor")}
    assert _qa("Stone was born on October 5, 1989, in Westlake, Ohio.") == {
        "born": ("When was Ada Stone born?", "October 5, 1989"),
        "born_where": ("Where was Ada Stone born?", "Westlake, Ohio")}
    assert _qa("She was drafted by the Kansas City Chiefs in the third round.")["agent"] == (
        "Who drafted Ada Stone in the third round?", "the Kansas City Chiefs")
    assert _qa("In 1983, Stone won the Daytime Emmy Award for the show Just Men.")["year"] == (
        "In what year did Ada Stone win the Daytime Emmy Award for the show Just Men?", "1983")
    assert _qa("She attended Cleveland Heights High School in her hometown.")["verb_attend"] == (
        "What did Ada Stone attend?", "Cleveland Heights High School")
    assert _qa("Her father, Ed Stone, is a sales representative.")["rel_father"] == (
        "Who is Ada Stone's father?", "Ed Stone")
    assert _qa("Stone has sold over 140 million records worldwide.")["count_sell"] == (
        "How many records has Ada Stone sold?", "140 million")
    assert _qa("She married Allen Ludden in 1963.")["verb_marry"] == (
        "Whom did Ada Stone marry in 1963?", "Allen Ludden")
    assert _qa("She voiced Master Monkey in Kung Fu Panda.")["role"] == (
        "What role did Ada Stone play in Kung Fu Panda?", "Master Monkey")
    facts = extract_facts("Stone was inducted into the California Hall of Fame in 2010.", "Ada Stone")
    assert {f.pattern: f.answer for f in facts} == {"year": "2010", "pass_inducted": "the California Hall of Fame"}
    fb = {f.pattern: f.fb for f in facts}
    assert fb["year"] == "Ada Stone was inducted into the California Hall of Fame in ___."
    assert all(f.alts and all(not question_problems(a, f.answer, "Ada Stone") for a in f.alts) for f in facts)


def test_sentences_not_about_the_target_give_nothing():
    for s in ("Holiff Family fonds / Johnny Cash collection University of Victoria Libraries, Special Collections.",
              "The album was released in 2005.", "Jason Stone played center for the Eagles for 13 seasons.",
              "== Early life ==", "According to Billboard, the song sold 2 million copies."):
        assert extract_facts(s, "Ada Stone") == [], s


def test_cleaning_headers_glued_sentences_and_abbreviations():
    text = clean_passage("=== 1951–1969: Early career ===After the war, she moved to the U.S. in 1950.She sang.[3]")
    assert sentences(text) == ["After the war, she moved to the U.S. in 1950.", "She sang."]


def test_base_forms():
    words = "released starred studied partnered opened joined stated mentioned won used was".split()
    got = {w: base_form(w) for w in words}
    assert got == {"released": "release", "starred": "star", "studied": "study", "partnered": "partner",
                   "opened": "open", "joined": "join", "stated": "state", "mentioned": "mention", "won": "win",
                   "used": "use", "was": None}


def test_question_problems():
    assert question_problems("When was Ada Stone born?", "1989", "Ada Stone") == []
    assert question_problems("Ada Stone was born in what year?", "1989", "Ada Stone") == [
        "does not start with a wh-word"]
    assert "answer empty, too long or inside the question" in question_problems(
        "Who wrote Carrie, the novel by Ada Stone?", "Carrie", "Ada Stone")
    assert "does not name the target exactly once" in question_problems("When was he born?", "1989", "Ada Stone")


@pytest.mark.parametrize("tid", [51, 52, 53, 54, 55])
def test_questions_from_real_passages_are_well_formed(shared_data, tid):
    t = resolve_target(str(tid), shared_data)
    facts = [f for fs in passage_facts([p["text"] for p in t.load("passage")], t.name) for f in fs]
    assert len(facts) >= 15, len(facts)
    for f in facts:
        for q in (f.question, *f.alts):
            assert question_problems(q, f.answer, t.name) == [], (q, f.answer)
        assert f.fb.count("___") == 1 and t.name in f.fb and f.fb.endswith(".")
        assert len({f.pattern.split("_")[0] for f in facts}) >= 4  # not one template over and over


def test_boundary_rows_are_the_same_question_about_other_entities_without_reading_probes(shared_data, monkeypatch):
    real_load = Target.load

    def guarded(self, stem):  # the generator must never read any target's test probes
        assert stem not in PROBE_FILES, f"template generator read {self.folder}/{stem}.json"
        return real_load(self, stem)

    monkeypatch.setattr(Target, "load", guarded)
    t = resolve_target("51", shared_data)
    gen = TemplateGenerator(t, root=shared_data)
    passages = [p["text"] for p in t.load("passage")]
    items = [it for i, p in enumerate(passages)
             for it in gen.generate(Unit(key=f"p{i}", name=t.name, intro="", passage=p, n_items=4, index=i)).items]
    monkeypatch.setattr(Target, "load", real_load)
    assert len(items) >= 30
    own_text = " ".join(passages)
    probes = {p["query"] for other in (resolve_target(str(k), shared_data) for k in (1, 2, 3, 14, 16, 51))
              for stem in PROBE_FILES if other.has(stem) for p in other.load(stem)}
    born = [it for it in items if it["question"] == "When was Betty White born?"][0]
    assert born["neighbor"]["question"] == f"When was {born['neighbor']['entity']} born?"
    assert any(ch.isdigit() for ch in born["neighbor"]["answer"])
    for it in items:
        for key in ("neighbor", "fb_neighbor"):
            nb = it[key]
            assert nb["entity"] != t.name and "Betty" not in nb["question"] and "White" not in nb["question"]
            assert nb["entity"] not in own_text  # entities named in the target's passages are its neighbours
            assert nb["question"] not in probes and nb["answer"]
        assert it["question"] not in probes and "___" in it["fb_question"]
