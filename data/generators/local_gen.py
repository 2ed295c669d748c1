"""Offline LLM generator: a local Hugging Face causal LM with the same prompts and JSON checks as `openai`."""

from __future__ import annotations

import logging

from data.generators.base import GenResult, MalformedResponse, Unit, build_messages, parse_response, validate_items
from data.generators.cache import RequestCache, request_key

log = logging.getLogger(__name__)


class LocalGenerator:
    """Greedy decoding with ``verl.models.embedded.load_model_and_tokenizer`` (default: the embedded model).

    Small models rarely produce valid JSON; every unusable answer is counted in ``rejected``.
    """

    name = "local"

    def __init__(self, model: str | None = None, cache_path: str | None = None, max_new_tokens: int = 768):
        import torch

        from verl.models.embedded import EMBEDDED_MODEL, load_model_and_tokenizer

        self.model = model or EMBEDDED_MODEL
        self.max_new_tokens = max_new_tokens
        self.cache = RequestCache(cache_path)
        self._torch = torch
        self.lm, self.tok = load_model_and_tokenizer(self.model)
        self.lm.eval()

    def _complete(self, messages: list[dict]) -> str:
        tok = self.tok
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n\n".join(m["content"] for m in messages) + "\n"
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        with self._torch.no_grad():
            out = self.lm.generate(
                **enc, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    def generate(self, unit: Unit) -> GenResult:
        messages = build_messages(unit)
        key = request_key(self.model, messages, {"greedy": True, "max_new_tokens": self.max_new_tokens})
        res = GenResult()
        text = self.cache.get(key)
        if text is not None:
            res.cache_hits = 1
        else:
            text = self._complete(messages)
            res.requests = 1
        try:
            raw = parse_response(text)
        except MalformedResponse as e:
            log.info("unit %s: local model answer rejected (%s)", unit.key, e)
            res.rejected = 1  # greedy decoding is deterministic: asking again would give the same answer
            return res
        if not res.cache_hits:
            self.cache.put(key, self.model, text)
        res.items, res.rejected = validate_items(raw, unit.name)
        return res
