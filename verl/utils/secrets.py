"""Scrubbing of secrets (API keys, tokens) out of error texts and log lines.

A key may reach an error message when an endpoint echoes it (e.g. a 401 body). Every entry point scrubs its
tracebacks and log records through ``scrub`` (see ``verl.utils.cli.run_main``); the naturalness judge scrubs its
per-item failure reasons with it too.
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from collections.abc import Iterable

# environment variables whose values are secrets: names containing one of these words
SECRET_ENV_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
MIN_SECRET_LEN = 8  # shorter values are too likely to occur in ordinary text
MASK = "***"
# key-shaped strings even when they are not in the environment (OpenAI sk-..., HF hf_..., bearer headers)
_KEY_PATTERNS = re.compile(r"\b(?:sk-[A-Za-z0-9_\-]{16,}|hf_[A-Za-z0-9]{16,})|(?i:bearer\s+)[A-Za-z0-9._\-]{16,}")


def secret_values(extra: Iterable[str] = ()) -> list[str]:
    """Secret values to hide: ``extra`` plus every environment variable named like a secret (longest first)."""
    vals = {v for v in extra if v and len(v) >= MIN_SECRET_LEN}
    for name, value in os.environ.items():
        if any(w in name.upper() for w in SECRET_ENV_WORDS) and value and len(value) >= MIN_SECRET_LEN:
            vals.add(value)
    return sorted(vals, key=len, reverse=True)


def scrub(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every known secret (and a fragment of 8+ leading characters of one) and key-shaped string
    replaced by ``***``."""
    if not text:
        return text
    for value in secret_values(extra):
        text = text.replace(value, MASK)
        text = re.sub(re.escape(value[:MIN_SECRET_LEN]) + r"\S*", MASK, text)  # truncated echoes ("sk-abc12...")
    return _KEY_PATTERNS.sub(MASK, text)


def install_log_scrubber() -> None:
    """Scrub every log record created from now on (message, arguments and exception text), whatever handler
    writes it. Idempotent."""
    old = logging.getLogRecordFactory()
    if getattr(old, "_scrubs", False):
        return

    def factory(*args, **kwargs):
        record = old(*args, **kwargs)
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is logging's problem, not ours
            return record
        record.msg, record.args = scrub(msg), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    factory._scrubs = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
