"""Append-only JSONL request cache keyed by a hash of (model, messages, sampling parameters).

Only answers that parsed are stored, so a malformed answer is asked again on the next run. The cache holds
model answers only: never credentials, headers or base URLs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def request_key(model: str, messages: list[dict], params: dict) -> str:
    blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class RequestCache:
    """``get(key) -> str | None`` and ``put(key, model, text)``; ``path=None`` disables caching."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self._mem: dict[str, str] = {}
        if self.path and self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self._mem[rec["key"]] = rec["response"]
                    except (json.JSONDecodeError, KeyError):
                        continue  # a torn last line from a killed run: ignore it

    def get(self, key: str) -> str | None:
        return self._mem.get(key)

    def put(self, key: str, model: str, text: str) -> None:
        self._mem[key] = text
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "model": model, "response": text}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
