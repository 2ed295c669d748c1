"""Whether a generation ends where its first sentence does: the report's Refusal Ends.

A refusal that runs on to the token limit ("I've no idea about Stephen King, I know about the fact that I know about
...") reads as babble, while a model that has learned to refuse says so and stops. Per probe generation the evaluator
keeps ``eos`` (an EOS id ended it, not the token limit), ``n_tokens`` (the new tokens before that end) and
``tail_tokens`` (those after the first sentence of its first line, the sentence the strict refusal detector reads).
A generation *ends* when it stopped at EOS at most ``MAX_TAIL_TOKENS`` tokens after that sentence; Refusal Ends is
the share of refused forget probes whose generation ends.
"""

from __future__ import annotations

from collections.abc import Iterable

from verl.utils.text import first_sentence_end

MAX_TAIL_TOKENS = 3


def end_fields(tokenizer, output: str, end: dict | None) -> dict:
    """``{"eos", "n_tokens", "tail_tokens"}`` of one generation from ``generate``'s ``info`` entry ``end`` (the raw,
    unstripped ``output``); {} without one. The sentence's tokens are counted by re-tokenizing its text, which can
    differ from the generated split by a token at the boundary, well inside ``MAX_TAIL_TOKENS``."""
    if not end:
        return {}
    cut = first_sentence_end(output)
    head = len(tokenizer(output[:cut], add_special_tokens=False)["input_ids"]) if cut else 0
    n = int(end["n_tokens"])
    return {"eos": bool(end["eos"]), "n_tokens": n, "tail_tokens": max(0, n - head)}


def ends(generation: dict, max_tail: int = MAX_TAIL_TOKENS) -> bool | None:
    """Whether a saved generation ends (module doc); None when it carries no end fields (older result files)."""
    if "eos" not in generation or "tail_tokens" not in generation:
        return None
    return bool(generation["eos"]) and int(generation["tail_tokens"]) <= max_tail


def ending_share(generations: Iterable[dict], max_tail: int = MAX_TAIL_TOKENS) -> tuple[float | None, int, int]:
    """(share that end, how many end, how many carry end fields) of ``generations``; share None when none does."""
    flags = [e for e in (ends(g, max_tail) for g in generations) if e is not None]
    return (sum(flags) / len(flags) if flags else None), sum(flags), len(flags)


__all__ = ["MAX_TAIL_TOKENS", "end_fields", "ending_share", "ends"]
