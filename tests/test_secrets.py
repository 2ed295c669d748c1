"""``verl.utils.secrets``: API keys never reach error output, log records, tracebacks or written files, even from
an endpoint that echoes the key back; a judge whose every call failed fails the run (exit 2) instead of scoring
nothing."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tests.test_cli_errors import exit_of
from tests.test_eval_cli_inputs import _eval_args
from verl.utils.cli import UserError

REPO = Path(__file__).resolve().parents[1]
CANARY = "sk-canary-0123456789abcdefghijklmnop"


class _Echo401(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that refuses every key and echoes it in the error, as some proxies do."""

    def do_POST(self):  # noqa: N802
        key = self.headers.get("Authorization", "").removeprefix("Bearer ")
        body = json.dumps({"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error",
                                     "code": "invalid_api_key"}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_endpoint(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _Echo401)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    yield url
    server.shutdown()


def test_scrub_hides_keys_and_fragments(monkeypatch):
    from verl.utils.secrets import scrub

    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    text = scrub(f"401: {CANARY} / truncated {CANARY[:12]}... / Bearer hf_abcdefghijklmnopqrstuvwx")
    assert CANARY[:8] not in text and "hf_abcdef" not in text and text.count("***") == 3


def test_synthesize_against_an_echoing_401_leaks_no_key(tmp_path, echo_endpoint):
    env = {**os.environ, "OPENAI_API_KEY": CANARY, "OPENAI_BASE_URL": echo_endpoint, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "data.synthesize", "--benchmark", "rwku", "--target", "101",
                           "--out", str(tmp_path / "o"), "--generator", "openai", "--max_retries", "0", "--no_cache"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "401" in out and "Incorrect API key" in out  # the endpoint's answer is shown ...
    assert CANARY not in out and CANARY[:8] not in out  # ... without the key
    for f in (tmp_path / "o").rglob("*"):
        if f.is_file() and not f.is_symlink():
            assert CANARY not in f.read_text(errors="ignore"), f


def test_judge_exits_non_zero_when_every_call_failed(tmp_path, echo_endpoint, capsys):
    from verl.eval.naturalness import main

    result = tmp_path / "r.json"
    result.write_text(json.dumps({"benchmark": "rwku", "metrics": {}, "generations": {
        "forget_level1": [{"query": "Who?", "answer": "A", "output": "I don't know."}]}}))
    code = exit_of(main, [str(result), "--judge", "openai", "--cache_path", str(tmp_path / "cache.jsonl"),
                          "--concurrency", "1"])
    err = capsys.readouterr()
    assert code == 2 and "every judge call failed" in err.err
    assert CANARY not in err.out + err.err


def test_log_records_and_tracebacks_are_scrubbed(monkeypatch, capsys):
    import io

    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger("test.secret")
    log.addHandler(handler)

    def main():
        log.warning("request failed: %s", f"echo {CANARY}")
        raise RuntimeError(f"endpoint said: bad key {CANARY}")

    try:
        assert exit_of(main) == 1  # a non-user error: traceback kept, exit 1
    finally:
        log.removeHandler(handler)
    err = capsys.readouterr().err
    assert "Traceback" in err and "endpoint said: bad key ***" in err and CANARY not in err
    assert stream.getvalue().strip() == "request failed: echo ***"


def test_evaluator_fails_when_every_judge_call_failed_and_keeps_the_suites_before(tmp_path, monkeypatch, echo_endpoint):
    import verl.eval.cli as cli
    import verl.eval.loader as emb  # where the evaluator looks the loader up

    monkeypatch.setattr(emb, "load_model_and_tokenizer", lambda *a, **k: (type("M", (), {"eval": lambda s: s})(), None))

    def forget(ctx, suite):
        ctx.metrics["forget"] = {"All": 0.25}
        ctx.generations["forget_level1"] = [{"query": "Who?", "answer": "A", "output": "I don't know."}]

    monkeypatch.setitem(cli.SUITES["rwku"], "forget", forget)
    args = _eval_args(tmp_path, "--suites", "forget,naturalness", "--judge", "openai")
    monkeypatch.setenv("RULE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="naturalness: every judge call failed") as info:
        cli.run(args)
    assert CANARY not in str(info.value)
    assert json.loads(cli.partial_path(args.output).read_text())["done"] == ["forget"]
