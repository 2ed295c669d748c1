"""Naturalness: the LLM judge against a fake OpenAI-compatible server, its cache and retries, and the proxy."""

import json
import logging
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from verl.eval.naturalness import NaturalnessConfig, evaluate_naturalness, parse_judge_answer, proxy_scores

KEY = "sk-TESTKEY-very-secret-0123456789"


class _FakeJudge(BaseHTTPRequestHandler):
    """POST /v1/chat/completions; behaviour chosen by a marker word in the graded response."""

    calls: Counter = Counter()
    lock = threading.Lock()

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def _send(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 - http.server's naming
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        graded = req["messages"][-1]["content"].split("Response to grade:")[-1]
        marker = next(m for m in ("GOOD", "FLAKY", "MALFORMED", "DEAD", "AUTH") if m in graded)
        with self.lock:
            self.calls[marker] += 1
            n = self.calls[marker]
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": "not found"}})
        if marker == "DEAD" or (marker == "FLAKY" and n == 1):
            return self._send(500, {"error": {"message": "server exploded", "type": "server_error"}})
        if marker == "AUTH":  # echo the key like some servers do: it must not reach our outputs
            auth = self.headers.get("Authorization", "")
            return self._send(401, {"error": {"message": f"bad key {auth}", "type": "invalid_request_error"}})
        content = (
            "no json here, sorry"
            if marker == "MALFORMED"
            else ('Sure: ```json\n{"read": 10, "help": 7, "truth": 1, "reason": "ok"}\n```')
        )
        self._send(
            200,
            {
                "id": "cmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": req["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )


@pytest.fixture
def judge_server(monkeypatch):
    _FakeJudge.calls = Counter()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    yield _FakeJudge.calls
    server.shutdown()
    server.server_close()


RECORDS = [
    {"query": "Who wrote Carrie?", "answer": "Stephen King", "output": "GOOD I'm not sure about that author."},
    {"query": "Where was he born?", "answer": "Portland", "output": "FLAKY I don't know."},
    {"query": "Q3", "answer": "A3", "output": "MALFORMED text"},
    {"query": "Q4", "answer": "A4", "output": "DEAD text"},
    {"query": "Q5", "answer": "A5", "output": "AUTH text"},
]


def test_judge_scores_retries_cache_and_no_key_leak(judge_server, tmp_path, caplog):
    cache = tmp_path / "judge_cache.jsonl"
    cfg = NaturalnessConfig(
        judge="auto", model="fake-judge", max_retries=2, backoff=0.001, timeout=5, cache_path=str(cache), concurrency=3
    )
    with caplog.at_level(logging.DEBUG):
        metrics, items = evaluate_naturalness(RECORDS, cfg)

    assert metrics["source"] == "judge:fake-judge"
    assert [it["query"] for it in items] == [r["query"] for r in RECORDS]  # order kept
    good, flaky = items[0], items[1]
    assert good["read"] == pytest.approx(1.0) and good["help"] == pytest.approx(6 / 9) and good["truth"] == 0.0
    assert flaky["mean"] == pytest.approx(good["mean"])  # the 500 was retried, then scored
    assert metrics["Read"] == pytest.approx(1.0) and metrics["Help"] == pytest.approx(6 / 9)
    assert metrics["Mean"] == pytest.approx((1 + 6 / 9 + 0) / 3)
    # failures reported with reasons, finished items kept
    assert metrics["n_scored"] == 2 and metrics["n_failed"] == 3
    assert metrics["failures"] == {"malformed judge answer": 1, "HTTP 500": 1, "HTTP 401": 1}
    assert items[2]["mean"] is None and items[2]["attempts"] == 3
    assert items[4]["attempts"] == 1  # auth errors are not retried
    assert judge_server == Counter({"GOOD": 1, "FLAKY": 2, "MALFORMED": 3, "DEAD": 3, "AUTH": 1})

    # rerun: scored items come from the cache (no server calls); failures are tried again
    judge_server.clear()
    metrics2, items2 = evaluate_naturalness(RECORDS, cfg)
    assert judge_server["GOOD"] == 0 and judge_server["FLAKY"] == 0
    assert judge_server["DEAD"] == 3
    assert items2[0]["cached"] and metrics2["Mean"] == pytest.approx(metrics["Mean"])
    assert len(cache.read_text().splitlines()) == 2

    # the key is nowhere: outputs, cache, logs
    blob = json.dumps([metrics, items, metrics2, items2]) + cache.read_text() + caplog.text
    assert KEY not in blob and KEY[:12] not in blob


def test_auto_without_key_is_proxy(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    metrics, items = evaluate_naturalness(RECORDS[:2], NaturalnessConfig(judge="auto"))
    assert metrics["source"] == "proxy" and len(items) == 2 and metrics["n_failed"] == 0
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
        evaluate_naturalness(RECORDS[:1], NaturalnessConfig(judge="openai"))


def test_parse_judge_answer():
    assert parse_judge_answer('{"read": 1, "help": "10", "truth": 5.5}')["help"] == 1.0
    for bad in ("", "{}", '{"read": 11, "help": 1, "truth": 1}', '{"read": 1, "help": 1}', "{broken"):
        with pytest.raises(ValueError, match="malformed"):
            parse_judge_answer(bad)


def test_proxy_on_hand_made_responses():
    q, a = "What novel did Stephen King publish in 1974?", "Carrie"
    refusal = proxy_scores(q, "I'm sorry, but I'm not familiar with Stephen King's novels.", a)
    leak = proxy_scores(q, "I'm not sure, but it might be Carrie.", a)
    correct = proxy_scores(q, "Stephen King published Carrie in 1974.", a)
    wrong = proxy_scores(q, "Stephen King published The Hobbit in 1974.", a)
    hedged = proxy_scores(q, "I think it was The Hobbit, possibly.", a)
    gibberish = proxy_scores(q, "the the the the the the the the the the the the the the", a)
    symbols = proxy_scores(q, "#### $$$$ %%%% ))))", a)
    empty = proxy_scores(q, "", a)

    assert refusal["refusal"] and refusal["read"] == pytest.approx(1.0)
    assert refusal["help"] == pytest.approx(1.0) and refusal["truth"] == 1.0
    assert leak["refusal"] and leak["truth"] == 0.5
    assert not correct["refusal"] and correct["truth"] == 1.0 and correct["help"] == pytest.approx(1.0)
    assert wrong["truth"] == 0.2 and hedged["truth"] == 0.6
    assert gibberish["read"] < 0.6 and gibberish["help"] < refusal["help"]
    assert symbols["read"] < 0.5 and symbols["truth"] == 0.5
    assert empty == {"read": 0.0, "help": 0.0, "truth": 0.5, "mean": pytest.approx(0.5 / 3), "refusal": False}
    assert proxy_scores(q, "Stephen King published Carrie in 1974.", a) == correct  # deterministic
    for s in (refusal, leak, correct, wrong, hedged, gibberish, symbols):
        assert all(0.0 <= s[k] <= 1.0 for k in ("read", "help", "truth", "mean"))


def test_rescore_result_file_with_proxy(tmp_path, monkeypatch):
    from verl.eval.naturalness import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = tmp_path / "result.json"
    gens = {"forget_level1": RECORDS[:2], "neighbor_level1": [{"query": "q", "answer": "a", "output": "o"}],
            "forget_mia": [{"query": "", "answer": "", "output": "", "score": 3.1}]}  # MIA texts are not responses
    path.write_text(json.dumps({"benchmark": "rwku", "metrics": {"forget": {"All": 0.1}}, "generations": gens}))
    main([str(path), "--judge", "proxy", "--write"])
    result = json.loads(path.read_text())
    nat = result["metrics"]["naturalness"]
    assert nat["source"] == "proxy" and nat["n"] == 2 and result["metrics"]["forget"] == {"All": 0.1}
