"""Training data of the knowledge-injection sandbox (stage ``inject``) in ``inject_mode: varied``.

The ``probes`` mode (the sandbox's default) trains on the forget/neighbor level-1/2 probes in the exact evaluation
prompt, epoch after epoch: the model learns a lookup table keyed by those strings, and refusal training on other
questions never reaches them. ``varied`` teaches the same facts the way pretraining would, in many phrasings, and
keeps the model a chat model. Per injected target and epoch the model sees (``composition`` counts every kind):

- ``passage``: the target's passages as raw text, cut into windows of ``inject_passage_tokens`` tokens
- ``statement``: each FB probe with its blank filled ("... is an American author."), raw text
- ``probe_variant``: ``inject_paraphrases`` chat pairs per probe in *other* prompt forms than the evaluator's
  ("Answer briefly: Q", "Fill in the blank: S", "Complete this sentence about X: S" -> the full statement, ...)
  with varied answer forms ("A", "The answer is A.")
- ``statement_qa``: template wh-questions (``data.generators.template_gen``) mined from the filled statements
- ``passage_qa``: template wh-questions mined from the target's passages (``inject_passage_facts``), with their
  rewordings
- ``exact_probe``: ``inject_exact_probes`` copies of each probe in the exact evaluation format (0: never)
- ``replay``: ``inject_replay`` general instructions (other targets' ``fluency.json``, never the injected targets'
  own) answered by the *base model's own greedy output* (self-distillation: keeps it a chat model)

Both modes can add the boundary facts (``--inject_boundary``, ``boundary_records``): kinds ``boundary_probe`` (a
``<normal>`` row of the boundary suite or the sandbox's ReBO pool in the evaluator's probe wrapper) and
``boundary_variant`` (the same fact in another prompt form).

Levels 1-2 only; the adversarial level 3 and MIA files are never used. Forget and neighbor probes are treated alike
(the neighbors must be known for locality to be measurable).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path

import torch

from data.boundary import boundary_facts
from data.generators.template_gen import clean_passage, passage_facts
from data.rwku import REBO_TRAIN_STEM, Target, list_targets, resolve_target
from RS.quick_eval import probe_stem
from verl.utils.chat import encode_prompt_response, format_prompt
from verl.utils.io import atomic_write_json

logger = logging.getLogger("RS.inject_data")

# prompt forms of a QA probe (question q about subject s); none is the evaluator's prompt
QA_FORMS = ("{q}", "Answer briefly: {q}", "{q} Reply with just the answer.", "Quick question about {s}: {q}",
            "I was wondering, {q_lower}", "Question: {q}")
# prompt forms of an FB probe (sentence f with ___); "stmt" forms are answered by the whole filled sentence
FB_FORMS = ("Fill in the blank: {f}", "{f}\nWhat goes in the blank?", "stmt:Complete this sentence about {s}: {f}",
            "Which word or words fill the gap? {f}",
            "stmt:Rewrite this sentence about {s} with the blank filled in: {f}")
ANSWER_FORMS = ("{a}", "{a}.", "The answer is {a}.", "It is {a}.")
FACT_QA_FORMS = ("{q}", "Answer briefly: {q}", "Quick question: {q}")


def _h(s: str) -> int:
    return int(hashlib.sha256(s.encode("utf-8")).hexdigest()[:12], 16)


def fill_blank(query: str, answer: str) -> str:
    """The FB probe as a statement: the first ``___`` replaced by the answer (a trailing period added if missing)."""
    s = query.replace("___", answer, 1).strip()
    return s if s[-1:] in ".!?\"'" else s + "."


def probe_variants(query: str, answer: str, stem: str, subject: str, k: int) -> list[dict]:
    """``k`` chat pairs for one probe in non-evaluation forms, chosen deterministically from the probe text."""
    fb = "___" in query
    forms = FB_FORMS if fb else QA_FORMS
    if not subject:  # a boundary row names no subject: only the forms that need none
        forms = tuple(f for f in forms if "{s}" not in f)
    start = _h(query)
    out = []
    for j in range(min(k, len(forms))):
        form = forms[(start + j) % len(forms)]
        a_form = ANSWER_FORMS[(start + j) % len(ANSWER_FORMS)]
        if form.startswith("stmt:"):
            prompt, response = form[5:].format(f=query, s=subject), fill_blank(query, answer)
        else:
            q_lower = query[:1].lower() + query[1:]
            prompt = form.format(q=query, q_lower=q_lower, f=query, s=subject)
            response = a_form.format(a=answer)
        out.append({"prompt": prompt, "response": response, "kind": "probe_variant"})
    return out


BOUNDARY_ANSWER_WORDS = 30  # the evaluator reads 30 new tokens; a longer gold answer is taught up to here


def clip_words(text: str, n: int) -> str:
    """The first ``n`` words of ``text`` (all of it when shorter)."""
    words = text.split()
    return text.strip() if len(words) <= n else " ".join(words[:n])


def boundary_records(targets: list[Target], args) -> tuple[list[dict], list[Path], dict]:
    """Stage 0's boundary facts (``--inject_boundary``): the ``<normal>`` rows of the boundary suite and of the
    sandbox's ReBO pool (``data.boundary``), each question -> its answer in the evaluator's probe wrapper (the form
    ReBO samples with ``data.prompt_format: rwku`` and the suite asks; kind ``boundary_probe``) and in
    ``inject_boundary_variants`` other prompt forms (``probe_variants``; kind ``boundary_variant``), so that the
    injected model answers boundary questions as a model that knows those entities would. Answers are cut to
    ``BOUNDARY_ANSWER_WORDS`` words (beyond them the evaluator's 30 tokens never reach). Returns the records, the
    files read and, per target, the split's record and the counts."""
    records: list[dict] = []
    files: list[Path] = []
    info: dict = {}
    for t in targets:
        suite, pool, split = boundary_facts(t, args.inject_boundary_share, args.inject_boundary_pool)
        if t.has(REBO_TRAIN_STEM):
            files.append(t.file(REBO_TRAIN_STEM))
        for row in suite + pool:
            answer = clip_words(row["answer"], BOUNDARY_ANSWER_WORDS)
            stem = probe_stem(row["query"])
            records.append({"query": row["query"], "answer": answer, "stem": stem, "kind": "boundary_probe"})
            for v in probe_variants(row["query"], answer, stem, "", args.inject_boundary_variants):
                records.append({**v, "kind": "boundary_variant"})
        info[t.folder] = {"split": split.record(), "suite_rows": len(suite), "pool_rows": len(pool),
                          "pool_groups": args.inject_boundary_pool}
    return records, files, info


def fact_pairs(facts, kind: str, with_alts: bool = True) -> list[dict]:
    """Chat pairs for template facts (``template_gen.Fact``): the question in a varied wrapper, then its rewordings."""
    out = []
    for f in facts:
        qs = (f.question, *f.alts) if with_alts else (f.question,)
        for j, q in enumerate(qs):
            form = FACT_QA_FORMS[_h(q) % len(FACT_QA_FORMS)] if j == 0 else "{q}"  # rewordings are wrapped already
            answer = ANSWER_FORMS[_h(q) % len(ANSWER_FORMS)].format(a=f.answer)
            out.append({"prompt": form.format(q=q), "response": answer, "kind": kind})
    return out


def passage_windows(tokenizer, text: str, n_tokens: int) -> list[str]:
    """``text`` cut into consecutive windows of at most ``n_tokens`` tokens (decoded back to text)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode(ids[i : i + n_tokens]) for i in range(0, len(ids), max(1, n_tokens))]


def varied_records(targets: list[Target], args, tokenizer, probe_stems) -> tuple[list[dict], list[Path]]:
    """Records of ``inject_mode: varied`` (without replay, which needs the model: see ``replay_records``)."""
    records: list[dict] = []
    files: list[Path] = []
    window = args.inject_passage_tokens or max(16, args.cutoff_len - 1)
    for t in targets:
        if args.inject_passages:
            for p in t.load("passage"):  # "== Section ==" headers dropped, every window kept
                text = re.sub(r"\n\s*", "\n", clean_passage(p["text"])).strip()
                records += [{"text": w, "kind": "passage"} for w in passage_windows(tokenizer, text, window)]
            files.append(t.file("passage"))
        statements = []
        for stem in probe_stems:
            if not t.has(stem):
                continue
            probes = t.load(stem)[: args.inject_probe_limit or None]
            files.append(t.file(stem))
            for p in probes:
                subject = p.get("neighbor") or p.get("subject") or t.name
                records += probe_variants(p["query"], p["answer"], stem, subject, args.inject_paraphrases)
                records += [{"query": p["query"], "answer": p["answer"], "stem": stem, "kind": "exact_probe"}] * max(
                    0, args.inject_exact_probes)
                if "___" in p["query"]:
                    statements.append((fill_blank(p["query"], p["answer"]), subject))
        records += [{"text": s, "kind": "statement"} for s, _ in statements]
        for s, subject in statements:
            records += fact_pairs(passage_facts([s], subject)[0], "statement_qa", with_alts=False)
        if args.inject_passage_facts and t.has("passage"):
            facts = [f for fs in passage_facts([p["text"] for p in t.load("passage")], t.name) for f in fs]
            records += fact_pairs(facts, "passage_qa")
    return records, files


def replay_instructions(targets: list[Target], root, n: int) -> tuple[list[str], list[Path]]:
    """``n`` general instructions from other targets' fluency.json (id order after the first injected target),
    never one of the injected targets' own (their utility Flu set)."""
    own_ids = {t.id for t in targets}
    own = {r["instruction"] for t in targets if t.has("fluency") for r in t.load("fluency")}
    all_t = [t for t in list_targets(root) if t.has("fluency")]
    ids = [t.id for t in all_t]
    first = min(own_ids) if own_ids else 0
    ordered = sorted((t for t in all_t if t.id not in own_ids),
                     key=lambda t: ((t.id - first) % (max(ids, default=0) + 1)))
    out, files, seen = [], [], set(own)
    for t in ordered:
        if len(out) >= n:
            break
        files.append(t.file("fluency"))
        for r in t.load("fluency"):
            ins = r["instruction"].strip()
            if ins not in seen and len(out) < n:
                seen.add(ins)
                out.append(ins)
    return out, files


def _cache_path(model_path: str, instructions: list[str], max_new_tokens: int) -> Path:
    key = hashlib.sha256(json.dumps([str(model_path), instructions, max_new_tokens]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("RULE_CACHE_DIR") or Path.home() / ".cache" / "rule")
    return root / "inject_replay" / f"{key}.json"


def self_distill(model, tokenizer, instructions: list[str], max_new_tokens: int, model_path: str,
                 batch_size: int = 16) -> list[dict]:
    """The model's own greedy answers to ``instructions`` (chat template), cached per (model, instructions, length)
    under ``$RULE_CACHE_DIR/inject_replay/`` so every target of a run reuses them."""
    cache = _cache_path(model_path, instructions, max_new_tokens)
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = []
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(instructions), batch_size):
            chunk = instructions[i : i + batch_size]
            enc = tokenizer([format_prompt(tokenizer, x) for x in chunk], return_tensors="pt", padding=True,
                            add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            for ins, row in zip(chunk, gen[:, enc["input_ids"].shape[1]:]):
                out.append({"prompt": ins, "response": tokenizer.decode(row, skip_special_tokens=True).strip(),
                            "kind": "replay"})
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    out = [r for r in out if r["response"]]
    atomic_write_json(cache, out)
    return out


def _kind(r: dict) -> str:
    return r.get("kind") or ("passage" if "text" in r else "exact_probe" if "query" in r else "?")  # probes mode


def composition(records: list[dict]) -> dict[str, int]:
    """Examples per kind (what the model sees in one epoch)."""
    return dict(Counter(_kind(r) for r in records))


def examples_by_kind(records: list[dict], k: int = 3) -> dict[str, list[dict]]:
    """The first ``k`` records of every kind, for the run folder's ``inject_data.json``."""
    out: dict[str, list[dict]] = {}
    for r in records:
        lst = out.setdefault(_kind(r), [])
        if len(lst) < k:
            lst.append({key: v for key, v in r.items() if key != "kind"})
    return out


def exact_probe_share(records: list[dict]) -> float:
    """Share of the question-answer examples that are a probe in its exact evaluation prompt (the lookup-table risk:
    1.0 in ``probes`` mode)."""
    qa = [r for r in records if _kind(r) in ("exact_probe", "probe_variant", "statement_qa", "passage_qa")]
    return sum(_kind(r) == "exact_probe" for r in qa) / max(1, len(qa))


def add_replay_and_describe(args, data, model, tokenizer, model_path: str, root, out_dir: Path, write: bool) -> None:
    """Stage inject: append the self-distilled replay (varied mode) to ``data`` and write ``inject_data.json``
    (examples per kind, the exact-probe share and samples of every kind) into the run folder."""
    if args.inject_mode == "varied" and args.inject_replay > 0:
        targets = [resolve_target(s.strip(), root) for s in args.target.split(",") if s.strip()]
        instructions, files = replay_instructions(targets, root, args.inject_replay)
        replay = self_distill(model, tokenizer, instructions, args.inject_replay_tokens, model_path)
        data.train += [encode_prompt_response(tokenizer, r["prompt"], r["response"], args.cutoff_len) for r in replay]
        data.records += replay
        data.files += files
    if write:
        atomic_write_json(out_dir / "inject_data.json", {
            "mode": args.inject_mode, "examples_per_epoch": len(data.train), "composition": composition(data.records),
            "exact_probe_share_of_qa": round(exact_probe_share(data.records), 4),
            "boundary": data.boundary, "samples": examples_by_kind(data.records)})


__all__ = ["add_replay_and_describe", "boundary_records", "clip_words", "composition", "examples_by_kind",
           "exact_probe_share", "fill_blank", "probe_variants", "replay_instructions", "self_distill", "varied_records"]
