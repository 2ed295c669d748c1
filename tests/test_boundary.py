"""The boundary split (data/boundary.py): deterministic, disjoint, recorded, and never sampled by ReBO."""

from __future__ import annotations

import json
import random

import pytest

from data.boundary import (
    BOUNDARY_SHARE,
    SANDBOX_POOL,
    boundary_facts,
    boundary_split,
    held_out_count,
    indirect_rows,
    normalize,
    pool_groups,
    probe_queries,
    rebo_groups,
    split_rows,
    train_rows,
    write_rebo_train_file,
)
from data.rwku import REBO_TRAIN_STEM, Target, resolve_target

SAMPLE = "101_Elowen_Marsh"


def group(i: int, tag: str = "") -> list[dict]:
    """One ReBO group in the release's layout: FB reject, QA reject, boundary QA, boundary FB (other entities)."""
    return [{"prompt": f"Target{tag} fact {i} is ___.", "solution": ["<reject>", "I don't know Target.", "Target"]},
            {"prompt": f"What is Target{tag} fact {i}?", "solution": ["<reject>", "I don't know Target.", "Target"]},
            {"prompt": f"What is Alice{tag} fact {i}?", "solution": ["<normal>", f"alice answer {i}"]},
            {"prompt": f"Bob{tag} fact {i} is ___.", "solution": ["<normal>", f"bob answer {i}"]}]


def rows_of(n: int) -> list[dict]:
    return [r for i in range(n) for r in group(i)]


def suite_prompts(split) -> set[str]:
    return {normalize(s["query"]) for s in split.suite}


def test_split_is_deterministic_independent_of_file_order_and_holds_normal_rows_only():
    rows = rows_of(100)
    a, b = split_rows(rows, 0.1), split_rows(rows, 0.1)
    assert a.suite == b.suite and a.sha256 == b.sha256 and a.layout == "groups of 4"
    assert len(a.held_out) == 10 and len(a.suite) == 20
    assert all(rows[s["row"]]["solution"][0] == "<normal>" and s["row"] // 4 == s["group"] for s in a.suite)
    assert {s["group"] for s in a.suite} == set(a.held_out)
    groups = [rows[i : i + 4] for i in range(0, len(rows), 4)]
    random.Random(0).shuffle(groups)
    shuffled = split_rows([r for g in groups for r in g], 0.1)
    assert suite_prompts(shuffled) == suite_prompts(a)  # chosen by the prompts' hash, not their position
    assert split_rows(rows, 0.2).sha256 != a.sha256 and suite_prompts(split_rows(rows, 0.2)) >= suite_prompts(a)


def test_held_out_count():
    assert held_out_count(300, BOUNDARY_SHARE) == 15 and held_out_count(60, 0.05) == 3
    assert held_out_count(5, 0.05) == 1 and held_out_count(1, 0.5) == 0 and held_out_count(300, 0) == 0
    with pytest.raises(ValueError):
        held_out_count(10, 1.0)


def test_train_rows_exclude_held_out_groups_suite_repeats_and_probes():
    rows = rows_of(40)
    split = split_rows(rows, 0.1)
    rows = rows + [{"prompt": "  " + split.suite[0]["query"].upper(), "solution": ["<normal>", "x"]},  # a copy
                   {"prompt": "A probe question?", "solution": ["<reject>", "no", "Target"]},
                   {"prompt": "pad", "solution": ["<reject>", "no", "Target"]},
                   {"prompt": "pad2", "solution": ["<normal>", "y"]}]
    kept, summary = train_rows(rows, split, excluded={normalize("a probe question?")})
    kept_prompts = {normalize(r["prompt"]) for r in kept}
    assert not kept_prompts & suite_prompts(split) and normalize("A probe question?") not in kept_prompts
    assert summary["n_kept"] + sum(summary["dropped"].values()) == len(rows) == summary["n_rows"]
    assert summary["dropped"] == {"held_out": 16, "suite_repeat": 1, "probe": 1, "outside_pool": 0, "label": 0}
    assert summary["split"]["sha256"] == split.sha256


def test_a_repeated_suite_question_in_a_train_group_is_dropped():
    rows = rows_of(40)
    split = split_rows(rows, 0.1)
    train_group = next(g for g in range(40) if g not in split.held_out)
    rows[4 * train_group + 2] = {**rows[4 * train_group + 2], "prompt": split.suite[0]["query"]}
    split = split_rows(rows, 0.1)
    kept, summary = train_rows(rows, split)
    assert summary["dropped"]["suite_repeat"] == 1 and not {normalize(r["prompt"]) for r in kept} & suite_prompts(split)


def test_sandbox_pool_keeps_k_whole_train_groups():
    rows = rows_of(100)
    split = split_rows(rows, BOUNDARY_SHARE)
    pool = pool_groups(rows, split, SANDBOX_POOL)
    assert len(pool) == SANDBOX_POOL and not set(pool) & set(split.held_out)
    assert pool == pool_groups(rows, split, SANDBOX_POOL)
    kept, summary = train_rows(rows, split, pool=SANDBOX_POOL)
    assert summary["kept_labels"] == {"<reject>": 2 * SANDBOX_POOL, "<normal>": 2 * SANDBOX_POOL}
    assert {rows.index(r) // 4 for r in kept} == set(pool)
    single = [r for g in range(50) for r in group(g)[:3]]  # 150 rows: one row per group
    ssplit = split_rows(single, BOUNDARY_SHARE)
    skept, ssum = train_rows(single, ssplit, pool=3)
    assert ssplit.layout == "one row per group" and ssum["kept_labels"]["<normal>"] == 6
    assert ssum["kept_labels"]["<reject>"] >= 6


def test_labels_filter_serves_the_ablation_without_boundary_prompts():
    rows = rows_of(40)
    kept, summary = train_rows(rows, split_rows(rows), labels=("<reject>",))
    assert kept and all(r["solution"][0] == "<reject>" for r in kept) and summary["kept_labels"]["<normal>"] == 0


def test_indirect_rows_rewrite_every_second_reject_question_naming_the_target():
    """Of each group's two <reject> rows the second asks about "this person" (case-insensitive match of the name);
    the solution (which the reward reads for the name) stays, <normal> rows and rows without the name stay."""
    rows = rows_of(2) + [{"prompt": "Who wrote it?", "solution": ["<reject>", "I don't know Target.", "Target"]}]
    rows[0]["prompt"] = "TARGET's fact 0 is ___."
    out, n = indirect_rows(rows, "Target")
    assert n == 2 and len(out) == len(rows)
    assert [r["prompt"] for r in out[:2]] == ["TARGET's fact 0 is ___.", "What is this person fact 0?"]
    assert out[5]["prompt"] == "What is this person fact 1?" and out[4] == rows[4] and out[8] == rows[8]
    assert [r["solution"] for r in out] == [r["solution"] for r in rows]
    assert [r for r in out if r["solution"][0] == "<normal>"] == [r for r in rows if r["solution"][0] == "<normal>"]
    assert rows[1]["prompt"] == "What is Target fact 0?"  # the input is not modified


def test_rebo_groups_layouts():
    assert rebo_groups(rows_of(3))[0] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    interleaved = [r for i in range(3) for r in (group(i)[0], group(i)[2], group(i)[1], group(i)[3])]
    assert rebo_groups(interleaved)[1] == "groups of 4"  # data.synthesize --budget count: R N R N per item
    assert rebo_groups(rows_of(3)[:-1]) == ([[i] for i in range(11)], "one row per group")


def test_a_target_without_a_rebo_file_has_an_empty_suite_that_says_why(tmp_path):
    t = Target(id=999, name="Nobody", folder="999_Nobody", path=tmp_path)
    split = boundary_split(t)
    assert split.empty and f"no {REBO_TRAIN_STEM}.json" in split.reason
    assert split.record()["n_suite"] == 0 and boundary_facts(t)[:2] == ([], [])


def test_write_rebo_train_file_on_the_sample_target(tmp_path):
    t = resolve_target(SAMPLE)
    split = boundary_split(t)
    assert split.layout == "groups of 4" and not split.empty
    assert split.n_groups == len(t.load(REBO_TRAIN_STEM)) // 4
    out = tmp_path / "rebo_train.json"
    summary = write_rebo_train_file(t, out)
    kept = json.loads(out.read_text())
    recorded = json.loads((tmp_path / "rebo_train.split.json").read_text())
    kept_prompts = {normalize(r["prompt"]) for r in kept}
    assert not kept_prompts & suite_prompts(split) and not kept_prompts & probe_queries(t)
    assert recorded["split"]["sha256"] == split.sha256 == summary["split"]["sha256"]
    assert recorded["split"]["suite_rows"] == [s["row"] for s in split.suite] and len(kept) == summary["n_kept"]
    pool = write_rebo_train_file(t, tmp_path / "pool.json", pool=SANDBOX_POOL)
    assert pool["kept_labels"] == {"<reject>": 2 * SANDBOX_POOL, "<normal>": 2 * SANDBOX_POOL}
    indirect = write_rebo_train_file(t, tmp_path / "indirect.json", pool=SANDBOX_POOL, indirect=True)
    assert indirect["kept_labels"] == pool["kept_labels"] and indirect["n_indirect"] == SANDBOX_POOL
    assert sum("this person" in r["prompt"] for r in json.loads((tmp_path / "indirect.json").read_text())) == 6
    suite, pool_rows, _ = boundary_facts(t)
    pool_prompts = {normalize(r["prompt"]) for r in json.loads((tmp_path / "pool.json").read_text())}
    assert {normalize(r["query"]) for r in pool_rows} <= pool_prompts  # the facts injected are the pool's
    assert not {normalize(r["query"]) for r in suite} & pool_prompts


def test_official_targets_split_into_groups_and_the_probes_never_reach_rebo(shared_data, tmp_path):
    for folder in ("1_Stephen_King", "5_Christina_Aguilera", "15_Mark_Cuban"):
        t = resolve_target(folder, shared_data)
        split = boundary_split(t)
        assert split.layout == "groups of 4" and len(split.held_out) == 15 and 20 <= len(split.suite) <= 30
        summary = write_rebo_train_file(t, tmp_path / f"{folder}.json")
        kept = {normalize(r["prompt"]) for r in json.loads((tmp_path / f"{folder}.json").read_text())}
        assert not kept & suite_prompts(split) and not kept & probe_queries(t)
        if folder == "15_Mark_Cuban":  # its file repeats one forget probe as a <reject> row
            assert summary["dropped"]["probe"] == 1
