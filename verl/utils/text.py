"""Plain-text helpers shared by the evaluator and the rewards."""

from __future__ import annotations

import re

# a sentence ends at . ! ? before a space, except after an initial or a title ("John D. Rockefeller", "Dr. King")
_SENTENCE_END = re.compile(r"(?<![A-Z])(?<!\b(?:Mr|Ms|Dr|St|Jr|Sr|vs))(?<!\bMrs)[.!?]+\s+")


def first_line(output: str) -> str:
    """The first non-empty line, stripped ("" if none): the RWKU evaluator's corrected probe answer (a newline stop
    that skips leading newlines) and the part of a response the strict refusal detector reads."""
    for line in output.strip().split("\n"):
        if line.strip():
            return line.strip()
    return ""


def has_word(text: str) -> bool:
    """True if ``text`` holds a word character (an "answer" that is only spaces or punctuation has none)."""
    return re.search(r"\w", text) is not None


def first_sentence(output: str) -> str:
    """The first sentence of ``first_line(output)``: the part the strict refusal detector reads, so that an answer
    followed by a refusal on the same line ("Kong Qiu. I'm not sure of the answer.") is an answer."""
    line = first_line(output)
    end = _SENTENCE_END.search(line)
    return line[: end.start() + 1] if end else line


def first_sentence_end(output: str) -> int:
    """The index in ``output`` just after ``first_sentence(output)`` (0 when there is none): what follows it is a
    refusal's tail, which the evaluator's Refusal Ends and the reward's ``tail_penalty`` both read."""
    sentence = first_sentence(output)
    at = output.find(sentence) if sentence else -1
    return at + len(sentence) if at >= 0 else 0
