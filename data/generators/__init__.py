"""Question/boundary generators for ``data.synthesize``: ``openai``, ``local`` (HF model) and ``template``."""

from __future__ import annotations

from data.generators.base import Generator, GenResult, Unit, build_messages, parse_response, validate_items

GENERATORS = ("openai", "local", "template")


def make_generator(kind: str, *, target=None, root=None, model: str | None = None, cache_path=None, **kw) -> Generator:
    """Build a generator by name. ``target``/``root`` are needed by ``template`` (boundary pools)."""
    if kind == "openai":
        from data.generators.openai_gen import OpenAIGenerator

        return OpenAIGenerator(model=model or "gpt-4o-mini", cache_path=cache_path, **kw)
    if kind == "local":
        from data.generators.local_gen import LocalGenerator

        return LocalGenerator(model=model, cache_path=cache_path, **kw)
    if kind == "template":
        from data.generators.template_gen import TemplateGenerator

        if target is None:
            raise ValueError("the template generator needs an RWKU target")
        return TemplateGenerator(target, root=root)
    raise ValueError(f"unknown generator {kind!r}; choose one of {GENERATORS}")


__all__ = ["GENERATORS", "GenResult", "Generator", "Unit", "build_messages", "make_generator", "parse_response",
           "validate_items"]
