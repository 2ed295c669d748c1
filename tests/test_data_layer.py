"""Data layer: target lookup and listing, validation errors on broken files, and that every shipped file validates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.muse import load_muse, load_muse_text
from data.paths import SAMPLE_ROOT, resolve_data_root
from data.rwku import (
    BENCHMARK_FILES,
    FORGET_FILES,
    PROBE_FILES,
    REBO_EVAL_STEM,
    REBO_TRAIN_STEM,
    RULE_FILES,
    list_targets,
    resolve_target,
)
from data.schemas import SCHEMAS, load_validated
from verl.utils.records import DataValidationError, read_json

SAMPLE_ID, SAMPLE_FOLDER, SAMPLE_NAME = 101, "101_Elowen_Marsh", "Elowen Marsh"
SAMPLE_DIR = SAMPLE_ROOT / "RWKU" / "Target" / SAMPLE_FOLDER
RWKU_STEMS = sorted(BENCHMARK_FILES + RULE_FILES)  # the 19 files of a target with RULE data
MUSE_STEMS = [s for s in SCHEMAS if "/" in s] + [
    "reject_target_0.5",
    "reject_target_0.5_0.2",
    "reject_qa",
    "reject_with_neighbor_target",
    "idk_target",
    REBO_EVAL_STEM,
]
SHARED_IDS = list(range(1, 41)) + list(range(51, 91))


@pytest.fixture
def no_data_env(monkeypatch, tmp_path):
    """No RULE_DATA_DIR and a cwd without ./data: only the project's sample is visible."""
    monkeypatch.delenv("RULE_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def with_shared_env(monkeypatch, shared_data):
    monkeypatch.setenv("RULE_DATA_DIR", str(shared_data))
    return shared_data


# ---------------------------------------------------------------- lookup and listing


@pytest.mark.parametrize("key", [SAMPLE_ID, "101", SAMPLE_FOLDER, SAMPLE_NAME, "Elowen_Marsh", str(SAMPLE_DIR)])
def test_resolve_sample_without_data_root(no_data_env, key):
    t = resolve_target(key)
    assert (t.id, t.name, t.folder) == (SAMPLE_ID, SAMPLE_NAME, SAMPLE_FOLDER)
    assert t.path.resolve() == SAMPLE_DIR.resolve()


@pytest.mark.parametrize("key", ["101", SAMPLE_FOLDER, SAMPLE_NAME])
def test_resolve_sample_with_shared_root(with_shared_env, key):
    assert resolve_target(key).folder == SAMPLE_FOLDER


@pytest.mark.parametrize("key", [1, "1", "1_Stephen_King", "Stephen King"])
def test_resolve_shared_target(with_shared_env, key):
    t = resolve_target(key)
    assert (t.id, t.name, t.folder) == (1, "Stephen King", "1_Stephen_King")
    assert t.has("forget_level1") and not t.has("no_such_file")


def test_resolve_target_by_path_outside_roots(no_data_env, tmp_path):
    folder = tmp_path / "elsewhere" / "7_Test_Person"
    folder.mkdir(parents=True)
    (folder / "intro.json").write_text(json.dumps([{"target": "Test Person", "intro": "x"}]))
    t = resolve_target(str(folder))
    assert (t.id, t.name, t.folder, t.path) == (7, "Test Person", "7_Test_Person", folder)
    assert t.load("intro")[0]["target"] == "Test Person"


@pytest.mark.parametrize("key", ["999", "Nobody At All", "42_Held_Out"])
def test_unknown_target_is_a_clear_error(no_data_env, key):
    with pytest.raises(DataValidationError) as err:
        resolve_target(key)
    msg = str(err.value)
    assert repr(key) in msg and "RULE_DATA_DIR" in msg and SAMPLE_FOLDER in msg


def test_listing_without_data_root_is_the_sample(no_data_env):
    assert [t.folder for t in list_targets()] == [SAMPLE_FOLDER]


def test_listing_with_shared_root(with_shared_env):
    targets = list_targets()
    assert [t.id for t in targets] == SHARED_IDS + [SAMPLE_ID]  # sorted by id; held-out ids absent
    assert len({t.folder for t in targets}) == 81
    assert [t.id for t in list_targets(with_shared_env)] == SHARED_IDS + [SAMPLE_ID]  # explicit root


def test_data_root_precedence(monkeypatch, tmp_path):
    env_root, explicit = tmp_path / "env", tmp_path / "explicit"
    env_root.mkdir()
    explicit.mkdir()
    monkeypatch.setenv("RULE_DATA_DIR", str(env_root))
    assert resolve_data_root() == env_root
    assert resolve_data_root(explicit) == explicit
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_data_root(tmp_path / "missing")
    monkeypatch.setenv("RULE_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="RULE_DATA_DIR"):
        resolve_data_root()
    monkeypatch.delenv("RULE_DATA_DIR")
    assert resolve_data_root() == Path("data")


# ---------------------------------------------------------------- validation errors


def _write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


GOOD_FB = {"query": "X was born in ___.", "answer": "1961", "level": "1", "type": "cloze", "subject": "X"}


def test_missing_key_names_file_record_and_key(tmp_path):
    path = _write(tmp_path, "forget_level1.json", [GOOD_FB, {"query": "no answer here ___"}])
    with pytest.raises(DataValidationError) as err:
        load_validated(path)
    msg = str(err.value)
    assert str(path) in msg and "record 1" in msg and "'answer'" in msg and "missing" in msg


def test_mistyped_key(tmp_path):
    path = _write(tmp_path, "forget_level2.json", [{**GOOD_FB, "answer": 1961}])
    with pytest.raises(DataValidationError, match=r"record 0: key 'answer' should be str, got int"):
        load_validated(path)
    path = _write(tmp_path, "retain_mmlu.json", [{"question": "q", "choices": "abcd", "answer": 0, "examples": []}])
    with pytest.raises(DataValidationError, match=r"key 'choices' should be list, got str"):
        load_validated(path)


def test_invalid_json_reports_line_and_column(tmp_path):
    path = _write(tmp_path, "forget_level1.json", '[\n  {"query": "a ___", "answer": "b"},\n  {"query": "c",}\n]')
    with pytest.raises(DataValidationError) as err:
        load_validated(path)
    msg = str(err.value)
    assert str(path) in msg and "invalid JSON at line 3 column" in msg


def test_empty_file_and_empty_list(tmp_path):
    with pytest.raises(DataValidationError, match="forget_level1.json"):
        load_validated(_write(tmp_path, "forget_level1.json", ""))
    with pytest.raises(DataValidationError, match="no records"):
        load_validated(_write(tmp_path, "forget_level2.json", "[]"))


def test_non_utf8_file(tmp_path):
    path = tmp_path / "forget_level1.json"
    path.write_bytes('[{"query": "caf\u00e9 ___", "answer": "x"}]'.encode("latin-1"))
    with pytest.raises(DataValidationError, match="not UTF-8"):
        load_validated(path)


def test_wrong_container_and_record_kinds(tmp_path):
    with pytest.raises(DataValidationError, match="expected a JSON list"):
        load_validated(_write(tmp_path, "forget_level1.json", {"query": "q", "answer": "a"}))
    with pytest.raises(DataValidationError, match="record 0: expected an object"):
        load_validated(_write(tmp_path, "forget_level1.json", ["just a string"]))
    with pytest.raises(DataValidationError, match="record 1: expected a string"):
        load_validated(_write(tmp_path, "idk_target.json", ["I don't know X.", {"text": "no"}]))


@pytest.mark.parametrize(
    "solution, pattern",
    [
        (["<refuse>", "I don't know X.", "X"], "must start with '<reject>' or '<normal>'"),
        ([], "must start with"),
        (["<normal>"], "list of >= 2 strings"),
        (["<normal>", 42], "list of >= 2 strings"),
    ],
)
def test_bad_solution(tmp_path, solution, pattern):
    good = {"prompt": "Who is X?", "solution": ["<reject>", "I don't know X.", "X"]}
    path = _write(tmp_path, f"{REBO_EVAL_STEM}.json", [good, {"prompt": "p", "solution": solution}])
    with pytest.raises(DataValidationError, match=pattern) as err:
        load_validated(path)
    assert "record 1" in str(err.value)


def test_missing_file_unknown_schema_and_jsonl(tmp_path):
    with pytest.raises(DataValidationError, match="file not found"):
        load_validated(tmp_path / "forget_level1.json")
    with pytest.raises(KeyError, match="no schema named"):
        load_validated(_write(tmp_path, "mystery.json", [{}]))
    path = _write(tmp_path, "rows.jsonl", '{"text": "a"}\n\n{"text": "b"}\n')
    assert read_json(path) == [{"text": "a"}, {"text": "b"}]
    assert load_validated(path, "forget_mia") == [{"text": "a"}, {"text": "b"}]


# ---------------------------------------------------------------- shipped files


def test_every_sample_file_validates(no_data_env):
    t = resolve_target(SAMPLE_ID)
    present = sorted(p.stem for p in t.path.glob("*.json"))
    assert present == RWKU_STEMS, "the sample target must ship every RWKU + RULE file"
    data = {stem: t.load(stem) for stem in present}
    for path in t.path.glob("*.json"):
        assert path.stat().st_size < 60_000, path.name
    assert data["intro"][0]["intro"].startswith(f"Please forget {SAMPLE_NAME}.")
    assert all(r["query"].count("___") == 1 for r in data["forget_level1"] + data["neighbor_level1"])
    assert all("neighbor" in r for r in data["neighbor_level1"] + data["neighbor_level2"])
    assert len(data["idk_target"]) == 100 == len(set(data["idk_target"]))
    rl = data[REBO_TRAIN_STEM]
    assert len(rl) == 4 * len(data["reject_target"])
    for r in rl:
        if r["solution"][0] == "<reject>":
            assert r["solution"][1] in data["idk_target"] and r["solution"][2] == SAMPLE_NAME
        else:
            assert len(r["solution"]) == 2 and SAMPLE_NAME not in r["prompt"]
    ev = data[REBO_EVAL_STEM]
    probes = [r for s in PROBE_FILES for r in data[s]]
    assert [r["prompt"] for r in ev] == [r["query"] for r in probes]
    assert [r["solution"][0] for r in ev].count("<reject>") == sum(len(data[s]) for s in FORGET_FILES)


def test_sample_builder_is_deterministic():
    """The committed JSON equals what build_sample.py produces now (nobody hand-edited the output)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_sample", SAMPLE_ROOT / "build_sample.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    files = mod.build_files()
    mod.self_check(files)
    for stem, records in files.items():
        assert json.loads((SAMPLE_DIR / f"{stem}.json").read_text(encoding="utf-8")) == records, stem


def test_every_shared_target_validates(with_shared_env):
    """Benchmark files exist for all 80 targets, RULE training files for 1-40; rl_rejection_eval_target exists
    for only some targets (both ranges), so it is validated where present and must be built from the probes
    elsewhere."""
    targets = [t for t in list_targets() if t.id != SAMPLE_ID]
    assert len(targets) == 80
    n_eval = 0
    for t in targets:
        for stem in RWKU_STEMS:
            required = stem in BENCHMARK_FILES or (
                stem in RULE_FILES and stem != REBO_EVAL_STEM and t.id <= 40
            )
            if not t.has(stem):
                assert not required, f"{t.folder} lacks {stem}.json"
                continue
            assert t.load(stem), f"{t.folder}/{stem}.json is empty"
            n_eval += stem == REBO_EVAL_STEM
    assert 0 < n_eval < 80


def test_muse_files_load(with_shared_env):
    if not (with_shared_env / "MUSE" / "books").is_dir():
        pytest.skip("MUSE-Books is not present")
    for stem in MUSE_STEMS:
        assert load_muse(stem), stem
    assert len(load_muse("knowmem/forget_qa")) == 100 and len(load_muse("verbmem/forget")) == 100
    assert len(load_muse_text("forget")) > 1000


def test_muse_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DataValidationError, match="MUSE-Books not found"):
        load_muse("knowmem/forget_qa", tmp_path)
