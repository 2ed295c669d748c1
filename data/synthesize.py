"""Build RULE's training files (RS refusal pairs, ReBO forget + boundary prompts) from a raw benchmark target.

RWKU::

    python -m data.synthesize --benchmark rwku --target 51 --out log/synth --generator template
    python -m data.synthesize --benchmark rwku --target 1 --out /tmp/synth --generator openai --model gpt-4o-mini

writes, in ``OUT`` when its name is a target folder (``51_Betty_White``) and otherwise in
``OUT/RWKU/Target/<id>_<Name>/`` (so ``OUT`` also works as a data root), the RULE files
``idk_target.json``, ``reject_target.json``, ``reject_with_fb_neighbor_target.json``,
``rl_rejection_with_fb_neighbor_target.json``, ``rl_rejection_eval_target.json``, links (``--copy``: copies) to the
target's benchmark files so ``data.rwku.resolve_target(dir)`` works, and ``synthesis_summary.{json,md}``.

MUSE-Books (``--benchmark muse``) builds ``rl_rejection_with_neighbor.json`` (the ReBO file missing from the release)
and ``reject_target.json`` from ``reject_with_neighbor_target.json``, plus the eval file from KnowMem.

Sizes (``--budget``):
- ``count`` (default): ``--n_questions`` questions (release: 300) -> RS 300 pairs, ReBO 4 x 300 prompts
  (question + FB rewrite as ``<reject>``, boundary question + boundary FB as ``<normal>``).
- ``paper``: questions are taken (in generation order) until their prompt tokens reach a fraction of the
  forget corpus tokens (RWKU ``passage.json``, MUSE ``raw/forget.txt``): RS ``--rs_fraction`` 6.29%; ReBO
  ``--rebo_forget_fraction`` 12.1% (``<reject>`` prompts) and ``--rebo_boundary_fraction`` 8.03% (``<normal>``).
  Tokens are counted on the plain prompt text (no chat template, no special tokens, refusals/answers not counted)
  with ``--tokenizer``: ``words`` (default; regex ``\\w+|[^\\w\\s]``, model-independent) or any HF tokenizer
  (path, hub id or ``embedded``).

Generation is resumable: every finished unit (one passage) is appended to ``.synth_partial.jsonl`` in the output
folder; a rerun skips finished units. Final files are written atomically and the partial file removed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import zip_longest
from pathlib import Path

from data import muse
from data.generators import Generator, Unit, make_generator
from data.refusal_templates import REFUSAL_TEMPLATES, refusals_for
from data.rwku import FORGET_FILES, NEIGHBOR_FILES, REBO_EVAL_STEM, REBO_TRAIN_STEM, RULE_FILES, Target, resolve_target
from data.schemas import load_validated, validate_records
from verl.utils.io import atomic_write_json
from verl.utils.typed_args import parse_typed

log = logging.getLogger("data.synthesize")
PARTIAL = ".synth_partial.jsonl"
PAPER_FRACTIONS = {"rs": 0.0629, "rebo_forget": 0.121, "rebo_boundary": 0.0803}
MUSE_WRITTEN = tuple(f"{s}.json" for s in ("idk_target", "reject_target", muse.REBO_TRAIN_STEM, muse.REBO_EVAL_STEM))


@dataclass
class SynthConfig:
    """The options of ``python -m data.synthesize``; each flag is the field of the same name (the command line also
    requires ``--out``, and ``--target`` for rwku)."""

    benchmark: str = "rwku"  # rwku | muse
    target: str | None = None  # RWKU target id / folder / name / path (ignored for muse)
    data_dir: str | None = None  # data root (default $RULE_DATA_DIR, then ./data)
    out: str = "log/synth"  # output folder (target folder or a root under which RWKU/Target/<folder> is made)
    generator: str = "template"  # openai | local | template
    model: str | None = None  # generator model (openai default gpt-4o-mini; local default the embedded model)
    n_questions: int | None = None  # questions to synthesize (rwku default 300; muse default all records)
    budget: str = "count"  # count | paper (token fractions of the forget corpus)
    rs_fraction: float = PAPER_FRACTIONS["rs"]  # RS questions' tokens / forget-corpus tokens (budget=paper)
    rebo_forget_fraction: float = PAPER_FRACTIONS["rebo_forget"]  # ReBO <reject> prompt tokens / corpus tokens
    rebo_boundary_fraction: float = PAPER_FRACTIONS["rebo_boundary"]  # ReBO <normal> prompt tokens / corpus tokens
    tokenizer: str = "words"  # token counter: words | HF tokenizer path/id | embedded
    refusals: str = "builtin"  # builtin (data/refusal_templates.py) | from_target (the target's idk_target.json)
    name: str | None = None  # display name in refusals (muse default "Harry Potter")
    cache: str | None = None  # request cache JSONL (default <out folder>/.request_cache.jsonl)
    no_cache: bool = False  # disable the request cache
    max_retries: int = 5  # openai: retries per request and per malformed answer
    base_delay: float = 1.0  # openai: first backoff delay in seconds (doubles each retry)
    copy: bool = False  # copy the benchmark files into the output instead of symlinking them
    muse_fewshot: str = "none"  # muse: none | icl (one fixed, label-independent few-shot prefix on qa rows)


# ---------------------------------------------------------------------------------------------- helpers
def make_token_counter(spec: str) -> Callable[[str], int]:
    """``words``: regex word/punctuation count; anything else: an HF tokenizer (no special tokens)."""
    if spec == "words":
        pat = re.compile(r"\w+|[^\w\s]")
        return lambda s: len(pat.findall(s))
    from transformers import AutoTokenizer

    from verl.models.embedded import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(spec))
    return lambda s: len(tok(s, add_special_tokens=False)["input_ids"])




def write_validated(path: Path, records: list, schema: str) -> None:
    validate_records(records, schema, path)
    atomic_write_json(path, records)


def place(src: Path, dst: Path, copy: bool) -> None:
    """Symlink (or copy) ``src`` to ``dst``, replacing what is there."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(src.resolve(), dst)


def _norm(s: str) -> str:
    return re.sub(r"\W+", " ", s.lower()).strip()


def _intro_text(target: Target) -> str:
    intro = target.load("intro")[0]["intro"]
    return re.sub(rf"^Please forget {re.escape(target.name)}\.\s*", "", intro).strip()


def _take_budget(seq: list, cost: Callable[[object], int], budget: float) -> list:
    """Prefix of ``seq`` whose cost first reaches ``budget`` (at least one element)."""
    out, used = [], 0
    for x in seq:
        if out and used >= budget:
            break
        out.append(x)
        used += cost(x)
    return out


# ---------------------------------------------------------------------------------------------- generation
def _load_partial(path: Path, gen: Generator) -> dict[str, dict]:
    """Finished units of an earlier (killed) run with the same generator and model."""
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):  # a kill mid-write left a torn last line: cut it so appends stay clean
        with open(path, "r+b") as f:
            f.truncate(raw.rfind(b"\n") + 1)
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn last line of a killed run
            if rec.get("generator") == gen.name and rec.get("model") == gen.model:
                done[rec["unit"]] = rec  # a unit written twice keeps one copy: no duplicates on resume
    return done


def run_units(units: list[Unit], gen: Generator, partial: Path) -> tuple[list[dict], dict]:
    """Generate every unit (skipping those already in ``partial``); return per-unit records and counters."""
    done = _load_partial(partial, gen)
    stats = Counter(resumed_units=sum(u.key in done for u in units))
    partial.parent.mkdir(parents=True, exist_ok=True)
    for i, unit in enumerate(units):
        if unit.key in done:
            continue
        res = gen.generate(unit)
        rec = {"unit": unit.key, "generator": gen.name, "model": gen.model, "items": res.items,
               "rejected": res.rejected, "requests": res.requests, "cache_hits": res.cache_hits}
        with open(partial, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        done[unit.key] = rec
        log.info("unit %d/%d %s: %d items, %d rejected", i + 1, len(units), unit.key, len(res.items), res.rejected)
    records = [done[u.key] for u in units]
    for r in records:
        stats["rejected_items"] += r["rejected"]
        stats["requests"] += r["requests"]
        stats["cache_hits"] += r["cache_hits"]
        stats["valid_items"] += len(r["items"])
    return records, dict(stats)


def interleave_unique(records: list[dict]) -> list[dict]:
    """Items round-robin across units (spreads coverage over passages), duplicates by question removed."""
    seen, out = set(), []
    longest = max((len(r["items"]) for r in records), default=0)
    for j in range(longest):
        for r in records:
            if j < len(r["items"]):
                it = r["items"][j]
                key = _norm(it["question"])
                if key not in seen:
                    seen.add(key)
                    out.append(it)
    return out


# ---------------------------------------------------------------------------------------------- RWKU
def rwku_out_dir(out: str | Path, folder: str) -> Path:
    out = Path(out)
    return out if re.match(r"^\d+_.", out.name) else out / "RWKU" / "Target" / folder


def refusal_list(cfg: SynthConfig, name: str, idk_path: Path | None) -> tuple[list[str], str]:
    if cfg.refusals == "from_target":
        if idk_path is None or not idk_path.is_file():
            raise FileNotFoundError(f"--refusals from_target: {idk_path} not found; use --refusals builtin")
        return load_validated(idk_path, "idk_target"), f"from_target:{idk_path}"
    if cfg.refusals != "builtin":
        raise ValueError(f"--refusals must be builtin or from_target, got {cfg.refusals!r}")
    return refusals_for(name, REFUSAL_TEMPLATES), "builtin:data/refusal_templates.py"


def eval_records(target: Target) -> list[dict]:
    """In-training validation from the test probes: forget levels 1-3 as <reject>, neighbor 1-2 as <normal>."""
    out = []
    for stem in FORGET_FILES:
        out += [{"prompt": p["query"], "solution": ["<reject>", p["answer"], target.name]} for p in target.load(stem)]
    for stem in NEIGHBOR_FILES:
        out += [{"prompt": p["query"], "solution": ["<normal>", p["answer"]]} for p in target.load(stem)]
    return out


def synthesize_rwku(cfg: SynthConfig, generator: Generator | None = None) -> dict:
    t0 = time.time()
    target = resolve_target(cfg.target, cfg.data_dir)
    out_dir = rwku_out_dir(cfg.out, target.folder)
    if out_dir.resolve() == target.path.resolve():
        raise ValueError(f"--out {out_dir} is the source target folder; choose another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    refusals, refusal_source = refusal_list(cfg, target.name, target.file("idk_target"))
    # benchmark files: linked so the output folder is a complete target (RULE files are ours)
    for src in sorted(target.path.glob("*.json")):
        if src.stem not in RULE_FILES:
            place(src, out_dir / src.name, cfg.copy)
    intro = _intro_text(target)
    passages = [p["text"] for p in target.load("passage")]
    n_q = cfg.n_questions or 300
    per_unit = math.ceil(1.3 * n_q / max(1, len(passages))) + 1  # over-generate: some items get rejected
    units = [Unit(key=f"p{i:04d}", name=target.name, intro=intro, passage=p, n_items=per_unit, index=i)
             for i, p in enumerate(passages)]
    cache = None if cfg.no_cache else (cfg.cache or str(out_dir / ".request_cache.jsonl"))
    gen = generator or make_generator(cfg.generator, target=target, root=cfg.data_dir, model=cfg.model,
                                      cache_path=cache, **_gen_kwargs(cfg))
    partial = out_dir / PARTIAL
    records, stats = run_units(units, gen, partial)
    cands = interleave_unique(records)
    if not cands:
        raise RuntimeError(f"generator {gen.name} produced no valid item for {target.folder} "
                           f"({stats.get('rejected_items', 0)} rejected); see the log")

    count = make_token_counter(cfg.tokenizer)
    corpus_tokens = sum(count(p) for p in passages)
    if cfg.budget == "count":
        rs_items = rebo_items = cands[:n_q]
        rebo_reject = [(it, k) for it in rebo_items for k in ("fb_question", "question")]
        rebo_normal = [(it, k) for it in rebo_items for k in ("neighbor", "fb_neighbor")]
    elif cfg.budget == "paper":
        rs_items = _take_budget(cands, lambda it: count(it["question"]), cfg.rs_fraction * corpus_tokens)
        pairs_r = [(it, k) for it in cands for k in ("fb_question", "question")]
        pairs_n = [(it, k) for it in cands for k in ("neighbor", "fb_neighbor")]
        rebo_reject = _take_budget(pairs_r, lambda p: count(p[0][p[1]]), cfg.rebo_forget_fraction * corpus_tokens)
        rebo_normal = _take_budget(pairs_n, lambda p: count(p[0][p[1]]["question"]),
                                   cfg.rebo_boundary_fraction * corpus_tokens)
    else:
        raise ValueError(f"--budget must be count or paper, got {cfg.budget!r}")

    ref_of = {id(it): refusals[i % len(refusals)] for i, it in enumerate(cands)}
    base = lambda it: {"instruction": it["question"], "input": "", "output": ref_of[id(it)],  # noqa: E731
                       "subject": target.name, "intro": intro}
    reject = [base(it) for it in rs_items]
    reject_fb = [{**base(it), "FB_instruction": it["fb_question"], "neighbor_question": dict(it["neighbor"]),
                  "FB_neighbor_question": dict(it["fb_neighbor"])} for it in rs_items]
    # ReBO file in the release's order: per question FB <reject>, question <reject>, boundary, boundary FB
    rl: list[dict] = []
    for i in range(max(len(rebo_reject), len(rebo_normal))):
        if i < len(rebo_reject):
            it, k = rebo_reject[i]
            rl.append({"prompt": it[k], "solution": ["<reject>", ref_of[id(it)], target.name]})
        if i < len(rebo_normal):
            it, k = rebo_normal[i]
            rl.append({"prompt": it[k]["question"], "solution": ["<normal>", it[k]["answer"]],
                       "entity": it[k]["entity"]})
    written = {
        "idk_target": refusals,
        "reject_target": reject,
        "reject_with_fb_neighbor_target": reject_fb,
        REBO_TRAIN_STEM: rl,
        REBO_EVAL_STEM: eval_records(target),
    }
    for stem, recs in written.items():
        write_validated(out_dir / f"{stem}.json", recs, stem)

    tok = lambda xs: sum(count(x) for x in xs)  # noqa: E731
    entities = Counter(e for it in rs_items for e in (it["neighbor"]["entity"], it["fb_neighbor"]["entity"]))
    summary = {
        "benchmark": "rwku", "target": target.folder, "source": str(target.path), "out_dir": str(out_dir),
        "generator": gen.name, "model": gen.model, "budget": cfg.budget, "tokenizer": cfg.tokenizer,
        "refusals": refusal_source, "n_passages": len(passages), "candidates": len(cands), **stats,
        "counts": {s: len(r) for s, r in written.items()},
        "rl_counts": dict(Counter(r["solution"][0] for r in rl)),
        "tokens": {
            "forget_corpus": corpus_tokens,
            "rs_questions": tok(it["question"] for it in rs_items),
            "rebo_reject_prompts": tok(r["prompt"] for r in rl if r["solution"][0] == "<reject>"),
            "rebo_normal_prompts": tok(r["prompt"] for r in rl if r["solution"][0] == "<normal>"),
        },
        "fractions_target": {"rs": cfg.rs_fraction, "rebo_forget": cfg.rebo_forget_fraction,
                             "rebo_boundary": cfg.rebo_boundary_fraction} if cfg.budget == "paper" else None,
        "boundary_entities": dict(entities.most_common(10)),
        "seconds": round(time.time() - t0, 2),
    }
    T = summary["tokens"]
    summary["fractions_achieved"] = {k: round(T[v] / max(1, corpus_tokens), 4) for k, v in
                                     (("rs", "rs_questions"), ("rebo_forget", "rebo_reject_prompts"),
                                      ("rebo_boundary", "rebo_normal_prompts"))}
    if cfg.budget == "paper":  # a generator that finds too few questions (template on a short corpus) falls short
        tgt = summary["fractions_target"]
        summary["budget_shortfall"] = {k: v for k, v in summary["fractions_achieved"].items() if v < tgt[k]}
        if summary["budget_shortfall"]:
            log.warning("%s: the %s generator found %d questions, short of the paper budget: achieved %s, target %s",
                        target.folder, gen.name, len(cands), summary["fractions_achieved"], tgt)
    _write_summary(out_dir, summary)
    partial.unlink(missing_ok=True)
    return summary


def _gen_kwargs(cfg: SynthConfig) -> dict:
    if cfg.generator == "openai":
        return {"max_retries": cfg.max_retries, "base_delay": cfg.base_delay}
    return {}


def _write_summary(out_dir: Path, s: dict) -> None:
    atomic_write_json(out_dir / "synthesis_summary.json", s)
    lines = [f"# Synthesis summary: {s['benchmark']} {s['target']}", "",
             f"generator `{s['generator']}` (model `{s['model']}`), budget `{s['budget']}`, "
             f"tokens counted with `{s['tokenizer']}`, refusals `{s['refusals']}`", "",
             "| file | records |", "|---|---|"]
    lines += [f"| {k}.json | {v} |" for k, v in s["counts"].items()]
    lines += ["", "| tokens | count | fraction of forget corpus | target |", "|---|---|---|---|"]
    tgt = s.get("fractions_target") or {}
    for key, tk in (("rs", "rs_questions"), ("rebo_forget", "rebo_reject_prompts"),
                    ("rebo_boundary", "rebo_normal_prompts")):
        lines.append(f"| {tk} | {s['tokens'][tk]} | {s['fractions_achieved'][key]:.4f} | {tgt.get(key, '-')} |")
    lines += ["", f"forget corpus tokens: {s['tokens']['forget_corpus']}; valid items {s.get('valid_items', 0)}, "
              f"rejected items {s.get('rejected_items', 0)}, requests {s.get('requests', 0)}, "
              f"cache hits {s.get('cache_hits', 0)}, resumed units {s.get('resumed_units', 0)}", ""]
    if s.get("budget_shortfall"):
        lines += [f"**Short of the paper budget** (all candidates used): {s['budget_shortfall']}", ""]
    (out_dir / "synthesis_summary.md").write_text("\n".join(lines), encoding="utf-8")


# ---------------------------------------------------------------------------------------------- MUSE
def muse_out_dir(out: str | Path) -> Path:
    out = Path(out)
    return out if out.name == "books" else out / "MUSE" / "books"


def _fewshot_prefix(src: Path, mode: str) -> str:
    """One fixed prefix for every qa row whatever its label (the release chose it by label, docs/design.md §11)."""
    if mode == "none":
        return ""
    if mode != "icl":
        raise ValueError(f"--muse_fewshot must be none or icl, got {mode!r}")
    shots = load_validated(src / "knowmem" / "retain_qa_icl.json", "knowmem/retain_qa_icl")[:3]
    return "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)


def _qa_prompt(prefix: str, q: str) -> str:
    return f"{prefix}Question: {q}\nAnswer:" if prefix else q


def synthesize_muse(cfg: SynthConfig) -> dict:
    t0 = time.time()
    src = muse.muse_dir(cfg.data_dir)
    out_dir = muse_out_dir(cfg.out)
    if out_dir.resolve() == src.resolve():
        raise ValueError(f"--out {out_dir} is the source MUSE folder; choose another folder")
    for f in sorted(src.rglob("*")):
        rel = f.relative_to(src)
        if f.is_file() and str(rel) not in MUSE_WRITTEN:
            place(f, out_dir / rel, cfg.copy)
    all_recs = load_validated(src / "reject_with_neighbor_target.json", "reject_with_neighbor_target")
    # the release has records whose neighbor_question lost its keys (30 of 1,662): skipped and counted
    recs = [r for r in all_recs if isinstance(r["neighbor_question"].get("question"), str)
            and isinstance(r["neighbor_question"].get("answer"), str)]
    # alternate the qa and completion rows so any prefix (budget or --n_questions) keeps both modes
    by_mode = [[r for r in recs if r.get("mode", "qa") == m] for m in ("qa", "completion")]
    recs = [r for pair in zip_longest(*by_mode) for r in pair if r is not None]
    name = cfg.name or "Harry Potter"
    count = make_token_counter(cfg.tokenizer)
    if cfg.budget == "paper":
        corpus_tokens = count((src / "raw" / "forget.txt").read_text(encoding="utf-8"))
        chosen_r = _take_budget(recs, lambda r: count(r["instruction"]), cfg.rebo_forget_fraction * corpus_tokens)
        chosen_n = _take_budget(recs, lambda r: count(r["neighbor_question"]["question"]),
                                cfg.rebo_boundary_fraction * corpus_tokens)
        rs = _take_budget(recs, lambda r: count(r["instruction"]), cfg.rs_fraction * corpus_tokens)
    else:
        corpus_tokens = None
        n = cfg.n_questions or len(recs)
        step = len(recs) / min(n, len(recs))
        chosen_r = chosen_n = rs = [recs[int(i * step)] for i in range(min(n, len(recs)))]
    if cfg.refusals == "from_target":
        refusals, refusal_source = load_validated(src / "idk_target.json", "idk_target"), "from_target"
        refuse = lambda i, r: r["output"]  # noqa: E731
    else:
        refusals, refusal_source = refusals_for(name), "builtin:data/refusal_templates.py"
        refuse = lambda i, r: refusals[i % len(refusals)]  # noqa: E731
    prefix = _fewshot_prefix(src, cfg.muse_fewshot)

    def reject_prompt(r):
        return _qa_prompt(prefix, r["instruction"]) if r.get("mode", "qa") == "qa" else r["instruction"]

    rl = []
    for i in range(max(len(chosen_r), len(chosen_n))):
        if i < len(chosen_r):
            r = chosen_r[i]
            rl.append({"prompt": reject_prompt(r), "solution": ["<reject>", refuse(i, r), "books"],
                       "mode": r.get("mode", "qa")})
        if i < len(chosen_n):
            nq, mode = chosen_n[i]["neighbor_question"], chosen_n[i].get("mode", "qa")
            # the prompt form follows the row's mode (qa / completion), never its label
            prompt = _qa_prompt(prefix, nq["question"]) if mode == "qa" else nq["question"]
            rl.append({"prompt": prompt, "solution": ["<normal>", nq["answer"]], "mode": mode})
    forget_qa = load_validated(src / "knowmem" / "forget_qa.json", "knowmem/forget_qa")
    retain_qa = load_validated(src / "knowmem" / "retain_qa.json", "knowmem/retain_qa")
    ev = [{"prompt": _qa_prompt(prefix, q["question"]), "solution": ["<reject>", q["answer"], "books"], "mode": "qa"}
          for q in forget_qa]
    ev += [{"prompt": _qa_prompt(prefix, q["question"]), "solution": ["<normal>", q["answer"]], "mode": "qa"}
           for q in retain_qa]
    rs_recs = [{"instruction": r["instruction"], "input": "", "output": refuse(i, r), "subject": "books",
                "mode": r.get("mode", "qa")} for i, r in enumerate(rs)]
    write_validated(out_dir / "idk_target.json", refusals, "idk_target")
    write_validated(out_dir / "reject_target.json", rs_recs, "reject_target")
    write_validated(out_dir / f"{muse.REBO_TRAIN_STEM}.json", rl, REBO_TRAIN_STEM)  # the RWKU ReBO file's schema
    write_validated(out_dir / f"{muse.REBO_EVAL_STEM}.json", ev, REBO_EVAL_STEM)
    summary = {
        "benchmark": "muse", "target": "books", "source": str(src), "out_dir": str(out_dir), "generator": "release",
        "model": None, "budget": cfg.budget, "tokenizer": cfg.tokenizer, "refusals": refusal_source,
        "fewshot": cfg.muse_fewshot, "source_records": len(all_recs), "skipped_malformed": len(all_recs) - len(recs),
        "counts": {"reject_target": len(rs_recs), muse.REBO_TRAIN_STEM: len(rl), muse.REBO_EVAL_STEM: len(ev)},
        "rl_counts": dict(Counter(r["solution"][0] for r in rl)),
        "rl_modes": dict(Counter(f"{r['solution'][0]}:{r['mode']}" for r in rl)),
        "tokens": {"forget_corpus": corpus_tokens,
                   "rs_questions": sum(count(r["instruction"]) for r in rs_recs),
                   "rebo_reject_prompts": sum(count(r["prompt"]) for r in rl if r["solution"][0] == "<reject>"),
                   "rebo_normal_prompts": sum(count(r["prompt"]) for r in rl if r["solution"][0] == "<normal>")},
        "seconds": round(time.time() - t0, 2),
    }
    atomic_write_json(out_dir / "synthesis_summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data.synthesize", description=__doc__.split("\n\n")[0])
    d = SynthConfig()
    p.add_argument("--benchmark", choices=["rwku", "muse"], default=d.benchmark)
    p.add_argument("--target", default=d.target, help="RWKU target id, folder, name or path")
    p.add_argument("--data_dir", default=d.data_dir, help="data root (default $RULE_DATA_DIR, then ./data)")
    p.add_argument("--out", required=True, help="output folder (target folder, or a root)")
    p.add_argument("--generator", choices=["openai", "local", "template"], default=d.generator)
    p.add_argument("--model", default=d.model, help="generator model (openai: gpt-4o-mini; local: embedded)")
    p.add_argument("--n_questions", type=int, default=d.n_questions,
                   help="questions to synthesize (rwku 300; muse all)")
    p.add_argument("--budget", choices=["count", "paper"], default=d.budget)
    p.add_argument("--rs_fraction", type=float, default=d.rs_fraction)
    p.add_argument("--rebo_forget_fraction", type=float, default=d.rebo_forget_fraction)
    p.add_argument("--rebo_boundary_fraction", type=float, default=d.rebo_boundary_fraction)
    p.add_argument("--tokenizer", default=d.tokenizer, help="words | HF tokenizer path/id | embedded")
    p.add_argument("--refusals", choices=["builtin", "from_target"], default=d.refusals)
    p.add_argument("--name", default=d.name, help="display name used in refusals (muse: Harry Potter)")
    p.add_argument("--cache", default=d.cache, help="request cache JSONL (default <out>/.request_cache.jsonl)")
    p.add_argument("--no_cache", action="store_true", default=d.no_cache)
    p.add_argument("--max_retries", type=int, default=d.max_retries)
    p.add_argument("--base_delay", type=float, default=d.base_delay)
    p.add_argument("--copy", action="store_true", default=d.copy, help="copy benchmark files instead of symlinking")
    p.add_argument("--muse_fewshot", choices=["none", "icl"], default=d.muse_fewshot)
    return p


def parse_args(argv: list[str] | None = None) -> SynthConfig:
    p = build_parser()
    cfg = parse_typed(p, SynthConfig, argv)
    if cfg.benchmark == "rwku" and not cfg.target:
        p.error("--target is required for --benchmark rwku")
    return cfg


def synthesize(cfg: SynthConfig, generator: Generator | None = None) -> dict:
    if cfg.benchmark == "muse":
        return synthesize_muse(cfg)
    return synthesize_rwku(cfg, generator)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    log.info("config: %s", json.dumps({k: v for k, v in asdict(cfg).items()}, default=str))
    s = synthesize(cfg)
    print(json.dumps({k: s[k] for k in ("out_dir", "counts", "tokens") if k in s}, indent=1))
    return 0


if __name__ == "__main__":
    from verl.utils.cli import run_main  # user errors in one line; tracebacks and logs with secrets scrubbed

    run_main(main)
