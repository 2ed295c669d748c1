"""Generator over any OpenAI-compatible chat endpoint (OPENAI_API_KEY / OPENAI_BASE_URL from the environment)."""

from __future__ import annotations

import logging
import os
import random
import time

from data.generators.base import GenResult, MalformedResponse, Unit, build_messages, parse_response, validate_items
from data.generators.cache import RequestCache, request_key

log = logging.getLogger(__name__)


class OpenAIGenerator:
    """Chat-completions generator with a request cache, exponential backoff and answer validation.

    Retried: HTTP 429 and >= 500, timeouts and connection errors (backoff ``base_delay * 2**attempt`` plus
    jitter, at most ``max_retries`` retries) and malformed answers (re-asked up to ``max_retries`` times). The key
    is read by the ``openai`` client from the environment and never logged, cached or written.
    """

    name = "openai"

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        cache_path: str | None = None,
        temperature: float = 0.7,
        max_retries: int = 5,
        base_delay: float = 1.0,
        timeout: float = 60.0,
        client=None,
    ):
        import openai

        self.model, self.temperature = model, temperature
        self.max_retries, self.base_delay = max_retries, base_delay
        self.cache = RequestCache(cache_path)
        self._openai = openai
        if client is None:
            if not os.environ.get("OPENAI_API_KEY"):
                raise RuntimeError("OPENAI_API_KEY is not set: export it (and OPENAI_BASE_URL for other endpoints)")
            # max_retries=0: the retry policy below is ours, so it is the same for every error kind and counted
            client = openai.OpenAI(max_retries=0, timeout=timeout)
        self.client = client
        self.retries_used = 0

    def _params(self) -> dict:
        return {"temperature": self.temperature}

    def _call(self, messages: list[dict]) -> str:
        oa = self._openai
        for attempt in range(self.max_retries + 1):
            try:
                resp = self.client.chat.completions.create(model=self.model, messages=messages, **self._params())
                return resp.choices[0].message.content or ""
            except (oa.RateLimitError, oa.APITimeoutError, oa.APIConnectionError, oa.InternalServerError) as e:
                err = e
            except oa.APIStatusError as e:
                if e.status_code < 500 and e.status_code != 429:
                    raise  # 4xx other than 429 (bad model name, auth): retrying will not help
                err = e
            if attempt == self.max_retries:
                raise RuntimeError(f"endpoint failed after {self.max_retries} retries: {type(err).__name__}") from err
            self.retries_used += 1
            delay = self.base_delay * (2**attempt) * (1 + 0.25 * random.random())
            log.warning("request failed (%s); retry %d in %.2fs", type(err).__name__, attempt + 1, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def generate(self, unit: Unit) -> GenResult:
        messages = build_messages(unit)
        key = request_key(self.model, messages, self._params())
        res = GenResult()
        cached = self.cache.get(key)
        if cached is not None:
            res.cache_hits = 1
            items, rejected = validate_items(parse_response(cached), unit.name)
            res.items, res.rejected = items, rejected
            return res
        for attempt in range(self.max_retries + 1):
            text = self._call(messages)
            res.requests += 1
            try:
                raw = parse_response(text)
            except MalformedResponse as e:
                res.rejected += 1  # one rejected answer; ask again
                log.warning("unit %s: malformed answer (%s), attempt %d", unit.key, e, attempt + 1)
                continue
            self.cache.put(key, self.model, text)
            items, rejected = validate_items(raw, unit.name)
            res.items, res.rejected = items, res.rejected + rejected
            return res
        log.warning("unit %s: no valid answer after %d attempts; skipped", unit.key, self.max_retries + 1)
        return res
