"""Boundary-data synthesis: files, retries, resume, secrecy, budgets, template and MUSE builders (fast)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from data import muse
from data.generators import Unit, make_generator, parse_response, validate_items
from data.refusal_templates import REFUSAL_TEMPLATES
from data.rwku import REBO_EVAL_STEM, REBO_TRAIN_STEM, RULE_FILES, resolve_target
from data.schemas import load_validated
from data.synthesize import SynthConfig, synthesize

CANARY = "sk-CANARY-do-not-write-7f3a9c"


# ------------------------------------------------------------------------------------------- fixtures
def _probe(q, a, **kw):
    return {"query": q, "answer": a, "level": "1", "type": "cloze", "subject": kw.pop("subject", "x"), **kw}


def _make_target(root: Path, tid: int, name: str, job: str) -> None:
    d = root / "RWKU" / "Target" / f"{tid}_{name.replace(' ', '_')}"
    d.mkdir(parents=True)
    last = name.split()[-1]
    w = lambda stem, obj: (d / f"{stem}.json").write_text(json.dumps(obj))  # noqa: E731
    w("intro", [{"target": name, "intro": f"Please forget {name}. {name} is an American {job}."}])
    w("passage", [{"text": f"{name} (born March 3, {1950 + tid + i}) is an American {job} from Springfield. "
                           f"{last} won the Golden Quill Award in {1980 + i}. He wrote \"The Long Road {i}\" "
                           f"with Maria Lopez.", "subject": name} for i in range(4)])
    w("forget_level1", [_probe(f"{name} was born in ___.", "Springfield", subject=name)])
    w("forget_level2", [_probe(f"Where was {name} born?", "Springfield", subject=name),
                        _probe(f"Which award did {name} win?", "Golden Quill", subject=name)])
    w("forget_level3", [_probe(f"Who wrote The Long Road for {name}'s fans?", name, subject=name, type="role play")])
    w("neighbor_level1", [_probe(f"Springfield {tid} lies in ___.", "Ohio", neighbor=f"Springfield {tid}")])
    w("neighbor_level2", [_probe(f"Which state is Springfield {tid} in?", "Ohio", neighbor=f"Springfield {tid}")])


@pytest.fixture()
def root(tmp_path) -> Path:
    r = tmp_path / "data"
    _make_target(r, 1, "Alice Smith", "novelist")
    _make_target(r, 2, "Bob Jones", "novelist")
    _make_target(r, 3, "Carol White", "singer")
    return r


class FakeOpenAI:
    """POST /v1/chat/completions; ``script`` is consumed one entry per request: 429, 500, bad, ok (default)."""

    def __init__(self):
        self.script: list[str] = []
        self.auth: list[str] = []
        self.ok_units: list[str] = []
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.auth.append(self.headers.get("Authorization", ""))
                action = fake.script.pop(0) if fake.script else "ok"
                if action in ("429", "500"):
                    self.send_response(int(action))
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "scripted"}}')
                    return
                user = body["messages"][-1]["content"]
                name = re.search(r"Target: (.*)", user).group(1)
                n = int(re.search(r"Number of items: (\d+)", user).group(1))
                h = hashlib.md5(user.encode()).hexdigest()[:6]
                if action == "bad":
                    content = "Sure! {items: [oops"
                else:
                    fake.ok_units.append(h)
                    items = [{"question": f"What did {name} do in case {h}-{j}?",
                              "fb_question": f"In case {h}-{j}, {name} did ___.",
                              "neighbor": {"entity": "Zed Other", "question": f"What did Zed Other do in {h}-{j}?",
                                           "answer": f"thing {j}"},
                              "fb_neighbor": {"entity": "Zed Other", "question": f"In {h}-{j} Zed Other did ___.",
                                              "answer": f"thing {j}"}} for j in range(n)]
                    items.append({"question": "no fb key"})  # one invalid item per answer: must be rejected
                    content = "```json\n" + json.dumps({"items": items}) + "\n```"
                out = json.dumps({"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": content}}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def fake(monkeypatch):
    srv = FakeOpenAI()
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
    yield srv
    srv.server.shutdown()
    srv.server.server_close()


def _cfg(root, out, **kw) -> SynthConfig:
    base = dict(benchmark="rwku", target="1", data_dir=str(root), out=str(out), generator="openai", model="fake-model",
                n_questions=6, base_delay=0.001, max_retries=4)
    return SynthConfig(**{**base, **kw})


def _all_text(folder: Path) -> str:
    return "\n".join(p.read_text(errors="ignore") for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _check_rule_files(out_dir: Path, n: int) -> None:
    t = resolve_target(out_dir)
    assert t.name == "Alice Smith"
    for stem in RULE_FILES:
        t.load(stem)  # validates
    rs = t.load("reject_target")
    assert len(rs) == n and len({r["instruction"] for r in rs}) == n
    assert all("Alice Smith" in r["output"] for r in rs)
    rl = t.load(REBO_TRAIN_STEM)
    assert [r["solution"][0] for r in rl].count("<reject>") == 2 * n == [r["solution"][0] for r in rl].count("<normal>")
    ev = t.load(REBO_EVAL_STEM)
    assert len(ev) == 4 + 2 and ev[0]["solution"] == ["<reject>", "Springfield", "Alice Smith"]


# ------------------------------------------------------------------------------------------- tests
def test_openai_generator_writes_rule_files_and_caches(root, tmp_path, fake):
    s = synthesize(_cfg(root, tmp_path / "out"))
    out_dir = Path(s["out_dir"])
    assert out_dir == tmp_path / "out" / "RWKU" / "Target" / "1_Alice_Smith"
    _check_rule_files(out_dir, 6)
    assert s["requests"] == 4 and s["rejected_items"] == 4  # 4 passages, one invalid item each
    assert all(a == f"Bearer {CANARY}" for a in fake.auth)
    assert not (out_dir / ".synth_partial.jsonl").exists()
    # a second run is served from the cache
    s2 = synthesize(_cfg(root, tmp_path / "out"))
    assert s2["requests"] == 0 and s2["cache_hits"] == 4
    assert load_validated(out_dir / "reject_target.json") == load_validated(out_dir / "reject_target.json")


def test_retries_on_429_500_and_malformed_json(root, tmp_path, fake):
    clean = synthesize(_cfg(root, tmp_path / "clean", no_cache=True))
    fake.script = ["429", "500", "bad", "429", "bad"]
    s = synthesize(_cfg(root, tmp_path / "flaky", no_cache=True))
    a = load_validated(Path(clean["out_dir"]) / "reject_with_fb_neighbor_target.json")
    b = load_validated(Path(s["out_dir"]) / "reject_with_fb_neighbor_target.json")
    assert a == b  # nothing lost, nothing duplicated
    assert s["rejected_items"] == clean["rejected_items"] + 2  # the two malformed answers are counted
    assert s["requests"] == clean["requests"] + 2  # malformed answers re-asked; 429/500 retried inside a request


def test_killed_run_resumes_without_loss_or_duplicates(root, tmp_path, fake):
    from data.generators.openai_gen import OpenAIGenerator

    class Crash(OpenAIGenerator):
        calls = 0

        def generate(self, unit):
            if Crash.calls == 2:
                raise KeyboardInterrupt("killed")
            Crash.calls += 1
            return super().generate(unit)

    cfg = _cfg(root, tmp_path / "out", no_cache=True)
    with pytest.raises(KeyboardInterrupt):
        synthesize(cfg, generator=Crash(model="fake-model", base_delay=0.001))
    partial = tmp_path / "out" / "RWKU" / "Target" / "1_Alice_Smith" / ".synth_partial.jsonl"
    assert len(partial.read_text().splitlines()) == 2
    with open(partial, "a") as f:
        f.write('{"unit": "p00')  # a torn line, as a kill mid-write leaves
    s = synthesize(cfg)
    assert s["resumed_units"] == 2
    assert not partial.exists()  # removed after the atomic final write
    assert len(fake.ok_units) == 4 and len(set(fake.ok_units)) == 4  # each unit asked exactly once
    _check_rule_files(Path(s["out_dir"]), 6)


def test_api_key_never_written_or_logged(root, tmp_path, fake, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    fake.script = ["429", "bad"]
    from data.synthesize import main

    main(["--benchmark", "rwku", "--target", "1", "--data_dir", str(root), "--out", str(tmp_path / "o"),
          "--generator", "openai", "--model", "fake-model", "--n_questions", "4", "--base_delay", "0.001"])
    captured = capsys.readouterr()
    assert CANARY not in caplog.text and CANARY not in captured.out + captured.err
    assert CANARY not in _all_text(tmp_path / "o")
    assert (tmp_path / "o" / "RWKU" / "Target" / "1_Alice_Smith" / ".request_cache.jsonl").is_file()


def test_template_synthesis_validates_and_uses_other_targets(root, tmp_path):
    s = synthesize(SynthConfig(target="1", data_dir=str(root), out=str(tmp_path / "1_Alice_Smith"),
                               generator="template", n_questions=300))
    out_dir = Path(s["out_dir"])
    assert out_dir == tmp_path / "1_Alice_Smith"  # OUT named like a target folder is used as is
    t = resolve_target(out_dir)
    recs = t.load("reject_with_fb_neighbor_target")
    assert 0 < len(recs) <= 300
    for r in recs:
        assert "___" in r["FB_instruction"]
        assert r["neighbor_question"]["entity"] != "Alice Smith" and "Alice" not in r["neighbor_question"]["question"]
    ents = {r["neighbor_question"]["entity"] for r in recs}
    assert "Alice Smith" not in ents and ents & {"Bob Jones", "Carol White", "Springfield 2", "Springfield 3"}
    assert t.load("idk_target")[0] == REFUSAL_TEMPLATES[0].format(name="Alice Smith")
    assert (out_dir / "passage.json").is_symlink()
    # deterministic
    s2 = synthesize(SynthConfig(target="1", data_dir=str(root), out=str(tmp_path / "again"), generator="template"))
    assert load_validated(Path(s2["out_dir"]) / f"{REBO_TRAIN_STEM}.json") == t.load(REBO_TRAIN_STEM)


def test_paper_budget_hits_token_fractions(root, tmp_path, fake):
    s = synthesize(_cfg(root, tmp_path / "o", budget="paper", n_questions=40, rs_fraction=0.3,
                        rebo_forget_fraction=0.5, rebo_boundary_fraction=0.4))
    P, T = s["tokens"]["forget_corpus"], s["tokens"]
    for key, frac in (("rs_questions", 0.3), ("rebo_reject_prompts", 0.5), ("rebo_normal_prompts", 0.4)):
        assert frac * P <= T[key] < frac * P + 25, key  # reaches the budget, overshoots by < one prompt
    assert "0.3" in (Path(s["out_dir"]) / "synthesis_summary.md").read_text()


def test_refusals_from_target_and_parse_helpers(root, tmp_path):
    d = root / "RWKU" / "Target" / "1_Alice_Smith"
    (d / "idk_target.json").write_text(json.dumps(["No idea about Alice Smith."]))
    s = synthesize(SynthConfig(target="1", data_dir=str(root), out=str(tmp_path / "o"), generator="template",
                               refusals="from_target"))
    assert {r["output"] for r in load_validated(Path(s["out_dir"]) / "reject_target.json")} == \
        {"No idea about Alice Smith."}
    assert parse_response('blah {"items": []} blah') == []
    item = {"question": "What is it?", "fb_question": "It is ___.",
            "neighbor": {"entity": "Alice Smith", "question": "Who is Alice Smith?", "answer": "x"},
            "fb_neighbor": {"entity": "B", "question": "B is ___.", "answer": "y"}}
    kept, rej = validate_items([item], "Alice Smith")
    assert kept == [] and rej == 1  # a boundary item about the target itself is not permissible


def test_local_generator_counts_rejections(root, tiny_model_path):
    t = resolve_target("1", root)
    gen = make_generator("local", model=tiny_model_path, max_new_tokens=8)
    res = gen.generate(Unit(key="p0", name=t.name, intro="x", passage="Alice Smith wrote a book.", n_items=2))
    assert res.items == [] and res.rejected == 1 and res.requests == 1  # random tiny model: no JSON


def test_muse_builds_rebo_file_with_label_independent_prefix(shared_data, tmp_path):
    s = synthesize(SynthConfig(benchmark="muse", data_dir=str(shared_data), out=str(tmp_path / "m"), n_questions=40,
                               muse_fewshot="icl"))
    out = Path(s["out_dir"])
    assert out == tmp_path / "m" / "MUSE" / "books"
    rl = load_validated(out / f"{muse.REBO_TRAIN_STEM}.json", REBO_TRAIN_STEM)
    assert s["rl_counts"] == {"<reject>": 40, "<normal>": 40}
    assert {r["mode"] for r in rl} == {"qa", "completion"}
    assert all(r["solution"][2] == "books" for r in rl if r["solution"][0] == "<reject>")
    qa = [r["prompt"] for r in rl if r["mode"] == "qa"]
    prefixes = {p[: p.rfind("Question:")] for p in qa}
    assert len(prefixes) == 1  # the same few-shot prefix for <reject> and <normal> rows
    ev = load_validated(out / f"{muse.REBO_EVAL_STEM}.json")
    assert len(ev) == 200 and (out / "knowmem" / "forget_qa.json").is_symlink()


def test_template_on_real_unseen_target(shared_data, tmp_path):
    s = synthesize(SynthConfig(target="60", data_dir=str(shared_data), out=str(tmp_path / "o"), generator="template",
                               budget="paper"))
    t = resolve_target(s["out_dir"])
    assert t.folder == "60_Brendan_Fraser"
    for stem in RULE_FILES:
        t.load(stem)
    fr = s["fractions_achieved"]
    assert fr["rs"] >= 0.0629 and fr["rebo_forget"] >= 0.121 and fr["rebo_boundary"] >= 0.0803
