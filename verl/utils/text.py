"""Plain-text helpers shared by the evaluator and the rewards."""

from __future__ import annotations


def first_line(output: str) -> str:
    """The first non-empty line, stripped ("" if none): the RWKU evaluator's corrected probe answer (a newline stop
    that skips leading newlines) and the part of a response the strict refusal detector reads."""
    for line in output.strip().split("\n"):
        if line.strip():
            return line.strip()
    return ""
