"""data.prepare: local folders are validated and linked; broken files are named; the hub path fails fast offline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import data.prepare as prep
from data.rwku import list_targets, resolve_target


def _target(root: Path, folder: str, name: str) -> Path:
    d = root / "RWKU" / "Target" / folder
    d.mkdir(parents=True)
    (d / "intro.json").write_text(json.dumps([{"target": name, "intro": f"{name} is a person."}]))
    (d / "passage.json").write_text(json.dumps([{"text": f"{name} was born.", "subject": name}]))
    (d / "forget_level1.json").write_text(json.dumps([{"query": f"{name} was ___.", "answer": "born"}]))
    return d


def test_local_dir_is_validated_and_linked(tmp_path):
    src = tmp_path / "src"
    _target(src, "1_Ann_Lee", "Ann Lee")
    _target(src, "2_Ben_Ray", "Ben Ray")
    rc = prep.main(["--benchmark", "rwku", "--source", str(src), "--out", str(tmp_path / "out")])
    assert rc == 0
    links = sorted((tmp_path / "out" / "RWKU" / "Target" / "1_Ann_Lee").iterdir())
    assert [p.name for p in links] == ["forget_level1.json", "intro.json", "passage.json"]
    assert all(p.is_symlink() for p in links)
    assert [t.folder for t in list_targets(tmp_path / "out") if t.id < 100] == ["1_Ann_Lee", "2_Ben_Ray"]
    assert resolve_target("2", tmp_path / "out").load("forget_level1")[0]["answer"] == "born"
    # --copy and --targets
    rc = prep.main(["--benchmark", "rwku", "--source", str(src / "RWKU"), "--out", str(tmp_path / "c"), "--copy",
                    "--targets", "2"])
    assert rc == 0
    files = list((tmp_path / "c" / "RWKU" / "Target").rglob("*.json"))
    assert len(files) == 3 and not any(f.is_symlink() for f in files)


def test_broken_file_reported_with_file_record_key(tmp_path, capsys):
    src = tmp_path / "src"
    d = _target(src, "1_Ann_Lee", "Ann Lee")
    (d / "forget_level2.json").write_text(json.dumps([{"query": "q?", "answer": "a"}, {"query": "no answer"}]))
    (d / "neighbor_level1.json").write_text("[{oops")
    rc = prep.main(["--benchmark", "rwku", "--source", str(src), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "forget_level2.json: record 1: missing key 'answer'" in err
    assert "neighbor_level1.json: invalid JSON" in err
    out = tmp_path / "out" / "RWKU" / "Target" / "1_Ann_Lee"
    assert (out / "intro.json").is_symlink() and not (out / "forget_level2.json").exists()


def test_muse_local(shared_data, tmp_path):
    res = prep.prepare("muse", str(shared_data), tmp_path / "o")
    assert res["errors"] == [] and res["linked"] >= 20
    assert (tmp_path / "o" / "MUSE" / "books" / "knowmem" / "forget_qa.json").is_symlink()


def test_hf_offline_fails_fast(tmp_path, monkeypatch, capsys):
    def no_network(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(prep.socket, "create_connection", no_network)
    for bench in ("rwku", "muse"):
        t0 = time.time()
        rc = prep.main(["--benchmark", bench, "--source", "hf", "--out", str(tmp_path / "o")])
        assert rc == 2 and time.time() - t0 < 5
        assert "cannot reach the Hugging Face hub" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(prep.PrepareError, match="HF_HUB_OFFLINE"):
        prep.prepare("rwku", "hf", tmp_path / "o")


def test_bad_source(tmp_path):
    with pytest.raises(prep.PrepareError, match="not 'hf' and not a folder"):
        prep.prepare("rwku", str(tmp_path / "missing"), tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(prep.PrepareError, match="no RWKU targets"):
        prep.prepare("rwku", str(tmp_path / "empty"), tmp_path / "o")
