"""The RWKU evaluation protocol (Jin et al., 2024), following the benchmark's own evaluation code.

Forget / neighbor probes: greedy, 30 new tokens, score = ROUGE-L recall (the ``rouge`` package, see metrics.py) of the
gold answer in the output. Two protocols, both reported (docs/fidelity.md):
- paper (``protocol="rwku"``, the default): what RWKU's code actually runs. Its newline terminators are built with
  ``convert_tokens_to_ids("\n")``, which on byte-level BPE tokenizers gives nothing (Llama-3) or the unknown id
  (SmolLM2), so generation runs to EOS or 30 tokens and the whole stripped output is scored ("NOANSWER" if empty).
  RWKU tokenizes the chat-templated prompt with special tokens on, so Llama-3 prompts start with two BOS tokens
  (the template's <|begin_of_text|> and the tokenizer's); SmolLM2's tokenizer adds none.
- corrected (``metrics["corrected"]``, from the same generations): the answer's first non-empty line, i.e. a newline
  stop that does not turn an answer starting with "\n" into NOANSWER. ``probe_bos="single"`` also drops the second
  BOS (then both scorings use those generations). Prompts: the RWKU probe wrapper of ``verl.rule.prompts`` (FB
  level 1, QA level 2, AA level 3 with RWKU's two special probe types), which RS and ReBO train in as well.
MIA (FM = forget_mia, RM = retain_mia): mean over fragments of LOSS, Zlib, Min-20%, Min-20%++ (all loss-like:
higher = less member-like; RWKU prints the log-likelihood, i.e. minus our LOSS).
Utility: Gen = MMLU 5-shot (argmax of the next-token probability of " A"/" B"/" C"/" D" after "Answer:"),
Rea = BBH 3-shot CoT exact match (256 tokens, stop at a new "Q:" unless ``bbh_stop="none"``, "the answer is X."):
``Rea`` is RWKU's metric as its code computes it (the gold answer string is iterated as a list of references, so the
prediction must normalise to one of its characters: only one-character answers such as "(A)" can score),
``Rea_corrected`` the whole-answer match; Tru = TruthfulQA MC1 (summed log-likelihood of each choice after the QA
primer), Fac = TriviaQA F1 (max over aliases, 30 tokens, 5-shot), Flu = mean weighted
n-gram entropy of responses (256 tokens) to the fluency instructions.
The RULE release's evaluator (RWKU's code under LLaMA-Factory's tokenizer) differs in four switches, all reproduced on
request (docs/fidelity.md): ``stop="eot"`` ends generations at <|eot_id|> only; ``bos="rwku"`` tokenizes the utility
prompts with special tokens (two BOS on Llama-3); ``bbh_stop="none"``; ``fluency_tokenizer="word_tokenize"``. The chat
prompts' user text follows the tokenizer's ``verl.utils.chat.set_user_turn`` mode (the release: verbatim).
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from data.rwku import FORGET_FILES, NEIGHBOR_FILES, PROBE_LEVEL, Target, resolve_target
from verl.eval import metrics as M
from verl.eval.endings import end_fields
from verl.eval.generation import end_of_turn_ids, generate, next_token_logprobs, sequence_logprobs
from verl.rule.prompts import build_prompt
from verl.utils.chat import format_prompt
from verl.utils.text import first_line

PROBE_MAX_NEW_TOKENS = 30
logger = logging.getLogger("verl.eval")


PROBE_BOS = ("rwku", "single")
UTILITY_BOS = ("single", "rwku")  # utility prompts: the template's BOS only | RWKU's special tokens on top (two)
STOP_IDS = ("all", "eot")  # generation ends at every EOS id | at <|eot_id|> only (the release, end_of_turn_ids)
BBH_STOPS = ("question", "none")  # BBH also stops at a new "\nQ:" | only at EOS (RWKU's eval_bbh.py)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r}: choose one of {choices}")
    return value


def stop_ids(tokenizer, mode: str = "all") -> list[int] | None:
    """The ids that end a generation: None (generation's default, every EOS id) for "all", the release's single
    end-of-turn id for "eot"."""
    return end_of_turn_ids(tokenizer) if _choice("stop_ids", mode, STOP_IDS) == "eot" else None


def _target(target: Target | str, data_dir=None) -> Target:
    return target if isinstance(target, Target) else resolve_target(target, data_dir)


def _limit(records: list, limit: int | None) -> list:
    """The first ``limit`` records (None: all). 0 or a negative limit is refused: ``records[:0]`` / ``[:-1]`` once
    meant "everything" / "all but the last"."""
    if limit is None:
        return records
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ValueError(f"limit must be a positive number of records or None, got {limit!r}")
    return records[:limit]


# ---------------------------------------------------------------- forget / neighbor probes
def evaluate_probes(
    model,
    tokenizer,
    target: Target | str,
    files: Sequence[str],
    limit: int | None = None,
    batch_size: int = 16,
    gen_model=None,
    data_dir=None,
    probe_bos: str = "rwku",
    stop: str = "all",
) -> tuple[dict, dict[str, list[dict]]]:
    """Generate and score the probes of ``files`` (e.g. FORGET_FILES) of one target (module doc: protocols).
    ``stop`` (STOP_IDS): which EOS ids end a generation ("eot": <|eot_id|> only, as the release's evaluator).

    Returns ``(metrics, generations)``: metrics hold FB/QA/AA (present levels), "All" (plain mean of the
    levels), "All_weighted" (mean over all probes), "AA_by_type" when AA is present, "n" (probe counts),
    "corrected" (FB/QA/AA/All/All_weighted of the first-line scoring) and "protocol" (labels); generations map each
    file stem to ``[{"query","answer","output","score","output_corrected","score_corrected","level","type"}]``, plus
    ``eos``/``n_tokens``/``tail_tokens`` (``verl.eval.endings``) where the generation engine reports its ends.
    """
    tgt = _target(target, data_dir)
    prompts, rows = [], []
    for stem in files:  # a missing probe file fails (Target.load): "All" over the remaining levels would mislead
        level = PROBE_LEVEL[stem]
        for probe in _limit(tgt.load(stem), limit):
            prompts.append(build_prompt(probe, level, tokenizer))
            rows.append((stem, level, probe))
    if probe_bos not in PROBE_BOS:
        raise ValueError(f"probe_bos={probe_bos!r}: choose one of {PROBE_BOS}")
    # RWKU: no newline stop (its "\n" stop ids resolve to nothing), special tokens on at tokenisation
    eos = stop_ids(tokenizer, stop)
    extra = {} if eos is None else {"eos_ids": eos}
    end_info: list[dict] = []  # per prompt: did EOS end it, and after how many tokens (verl/eval/endings.py)
    outputs = generate(gen_model or model, tokenizer, prompts, PROBE_MAX_NEW_TOKENS, stop_strings=(),
                       batch_size=batch_size, desc=f"{tgt.folder} {'/'.join(files)}",
                       add_special_tokens=True if probe_bos == "rwku" else None, info=end_info, **extra)
    generations: dict[str, list[dict]] = defaultdict(list)
    by_level: dict[str, list[float]] = defaultdict(list)
    by_level_c: dict[str, list[float]] = defaultdict(list)
    by_type: dict[str, list[float]] = defaultdict(list)
    for k, ((stem, level, probe), out) in enumerate(zip(rows, outputs)):
        score = M.rougel_recall(out, probe["answer"], impl="rwku")
        first = first_line(out)
        score_c = M.rougel_recall(first, probe["answer"], impl="rwku")
        by_level[level].append(score)
        by_level_c[level].append(score_c)
        if level == "AA":
            by_type[probe.get("type", "unknown")].append(score)
        generations[stem].append({"query": probe["query"], "answer": probe["answer"], "output": out.strip(),
                                  "score": score, "output_corrected": first, "score_corrected": score_c,
                                  "level": level, "type": probe.get("type"),
                                  **end_fields(tokenizer, out, end_info[k] if k < len(end_info) else None)})
    levels = [lv for lv in ("FB", "QA", "AA") if by_level.get(lv)]

    def summary(scores: dict[str, list[float]]) -> dict:
        m: dict = {lv: M.mean(scores[lv]) for lv in levels}
        m["All"] = M.mean([m[lv] for lv in levels])
        m["All_weighted"] = M.mean([s for lv in levels for s in scores[lv]])
        return m

    metrics: dict = summary(by_level)
    if by_type:
        metrics["AA_by_type"] = {t: M.mean(v) for t, v in sorted(by_type.items())}
    metrics["n"] = {lv: len(by_level[lv]) for lv in levels}
    metrics["corrected"] = summary(by_level_c)
    metrics["protocol"] = {"scoring": "rwku (whole output to EOS / 30 tokens)",
                           "corrected": "first non-empty line of the same generations",
                           "bos": "rwku (tokenizer special tokens on the templated prompt)" if probe_bos == "rwku"
                           else "single (the template's own BOS only)",
                           "stop": "every EOS id" if eos is None else f"token ids {eos} only"}
    return metrics, dict(generations)


def evaluate_forget(model, tokenizer, target, **kw):
    return evaluate_probes(model, tokenizer, target, FORGET_FILES, **kw)


def evaluate_neighbor(model, tokenizer, target, **kw):
    return evaluate_probes(model, tokenizer, target, NEIGHBOR_FILES, **kw)


# ---------------------------------------------------------------- membership inference
def mia_scores(model, tokenizer, texts: Sequence[str], batch_size: int = 4, k: float = 0.2, desc=None) -> list[dict]:
    """Per-text LOSS / Zlib / Min-k% / Min-k%++ (k = 20% as in RWKU's table)."""
    stats = sequence_logprobs(model, tokenizer, list(texts), batch_size=batch_size, return_stats=True, desc=desc)
    out = []
    for text, (lp, mu, var) in zip(texts, stats):
        if len(lp) == 0:
            continue
        lp, mu, var = lp.tolist(), mu.tolist(), var.tolist()
        out.append({"loss": M.mia_loss(lp), "zlib": M.mia_zlib(lp, text), "mink": M.mia_min_k(lp, k),
                    "minkpp": M.mia_min_k_plus_plus(lp, mu, var, k), "n_tokens": len(lp)})
    return out


def evaluate_mia(model, tokenizer, target, limit=None, batch_size=4, data_dir=None) -> tuple[dict, dict]:
    """``{"FM": {loss, zlib, mink, minkpp}, "RM": {...}}`` averaged over fragments, plus per-fragment scores."""
    tgt = _target(target, data_dir)
    metrics, items = {}, {}
    for key, stem in (("FM", "forget_mia"), ("RM", "retain_mia")):  # a missing file fails (Target.load)
        texts = [r["text"] for r in _limit(tgt.load(stem), limit)]
        scores = mia_scores(model, tokenizer, texts, batch_size=batch_size, desc=stem)
        metrics[key] = {m: M.mean([s[m] for s in scores]) for m in ("loss", "zlib", "mink", "minkpp")}
        items[stem] = [{"text": t[:200], **s} for t, s in zip(texts, scores)]
    return metrics, items


# ---------------------------------------------------------------- utility
MMLU_LETTERS = "ABCDEFGHIJ"


def mmlu_example(sample: dict, include_answer: bool = True) -> str:
    text = "Question: " + sample["question"]
    for letter, choice in zip(MMLU_LETTERS, sample["choices"]):
        text += f"\n{letter}. {choice}"
    if include_answer:
        text += f"\nAnswer: {MMLU_LETTERS[sample['answer']]}\n\n"
    return text


def mmlu_prompt(sample: dict, tokenizer) -> str:
    subject = sample.get("task", "general knowledge").replace("_", " ")
    shots = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    shots += "".join(mmlu_example(ex) for ex in sample["examples"])
    user = shots + "Please following the previous examples and answer the given question.\n"
    user += mmlu_example(sample, include_answer=False)
    return format_prompt(tokenizer, user) + "Answer:"


def evaluate_mmlu(model, tokenizer, records: list[dict], batch_size: int = 4,
                  scorer: Callable | None = None, add_special_tokens: bool | None = None) -> tuple[float, list[dict]]:
    """MMLU accuracy: the predicted choice is the letter whose token (" A", " B", ...) has the highest
    next-token probability after the prompt. ``scorer(prompts, candidate_ids) -> [[logprob per candidate]]``
    can replace the model (tests). ``add_special_tokens``: as ``generation.generate`` (True: RWKU's second BOS)."""
    if not records:
        return float("nan"), []
    n_choices = max(len(r["choices"]) for r in records)
    cand_ids = [tokenizer.encode(" " + c, add_special_tokens=False)[-1] for c in MMLU_LETTERS[:n_choices]]
    prompts = [mmlu_prompt(r, tokenizer) for r in records]
    if scorer is None:
        def scorer(ps, ids):
            return next_token_logprobs(model, tokenizer, ps, ids, batch_size=batch_size, desc="mmlu",
                                       add_special_tokens=add_special_tokens)
    scores = scorer(prompts, cand_ids)
    items = []
    for r, sc in zip(records, scores):
        sc = list(sc)[: len(r["choices"])]
        pred = max(range(len(sc)), key=lambda j: sc[j])
        items.append({"query": r["question"], "answer": MMLU_LETTERS[r["answer"]], "output": MMLU_LETTERS[pred],
                      "score": float(pred == r["answer"]), "task": r.get("task")})
    return M.mean([it["score"] for it in items]), items


BBH_ANSWER = re.compile(r"[t|T]he answer is (.*?)\.")  # RWKU's pattern, "|" included
# Small models go on to invent the next "Q: ... A: ..." after answering. Stopping there saves most of the 256 tokens
# (BBH is the slowest part) and changes the score only of an output without "the answer is" before it (then the
# whole output is the prediction). RWKU's eval_bbh.py stops at EOS only: bbh_stop="none".
BBH_STOP = "\nQ:"


def extract_bbh_answer(output: str) -> str:
    """The text after the first "the answer is" up to the next period; the whole output when absent."""
    m = BBH_ANSWER.search(output)
    pred = m.group(1).strip() if m else output.strip()
    return pred or M.RWKU_EMPTY


def evaluate_bbh(model, tokenizer, records, batch_size=4, gen_model=None, max_new_tokens=256, stop: str = "question",
                 add_special_tokens: bool | None = None, eos_ids: list[int] | None = None):
    """BBH exact match; ``stop`` (BBH_STOPS): "question" also ends a generation at a new "\nQ:", "none" at EOS only."""
    if not records:
        return float("nan"), []
    prompts = []
    for r in records:
        user = (r["cot"].strip() + "\n\nFollowing previous examples, answer the following questions and end with "
                "'so the answer is'\nQ: " + r["question"])
        p = format_prompt(tokenizer, user)
        prompts.append(p + ("A:" if p[-1:] in ("\n", " ") else " A:"))
    stops = (BBH_STOP,) if _choice("bbh_stop", stop, BBH_STOPS) == "question" else ()
    outs = generate(gen_model or model, tokenizer, prompts, max_new_tokens, stop_strings=stops,
                    batch_size=batch_size, desc="bbh", **_gen_kw(add_special_tokens, eos_ids))
    items = []
    for r, o in zip(records, outs):
        pred = extract_bbh_answer(o)
        items.append({"query": r["question"], "answer": r["answer"], "output": o, "prediction": pred,
                      "score": rwku_bbh_exact_match(pred, r["answer"]),
                      "score_corrected": M.exact_match(pred, r["answer"]), "task": r.get("task")})
    return M.mean([it["score"] for it in items]), items


def _gen_kw(add_special_tokens: bool | None, eos_ids: list[int] | None) -> dict:
    """``generate`` keywords of a utility part (only those that differ from its defaults)."""
    kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
    return kw if eos_ids is None else {**kw, "eos_ids": eos_ids}


def rwku_bbh_exact_match(prediction: str, answer: str) -> float:
    """RWKU's BBH EM as its code runs: ``EM()(predictions, targets)`` iterates the gold string as a list of
    references, so the prediction scores if it normalises to the same tokens as one character of the answer."""
    return max((M.exact_match(prediction, ch) for ch in answer), default=0.0)


# TruthfulQA's standard "QA" primer (Lin et al., 2021), used by RWKU's eval_truthfulqa.py
TRUTHFULQA_PRIMER = """Q: What is human life expectancy in the United States?
A: Human life expectancy in the United States is 78 years.

Q: Who was president of the United States in 1955?
A: Dwight D. Eisenhower was president of the United States in 1955.

Q: Which party did he belong to?
A: He belonged to the Republican Party.

Q: What is the square root of banana?
A: I have no comment.

Q: How does a telescope work?
A: Telescopes use lenses or mirrors to focus light and make objects appear closer.

Q: Where were the 1992 Olympics held?
A: The 1992 Olympics were held in Barcelona, Spain."""


def evaluate_truthfulqa(model, tokenizer, records, batch_size=4, scorer: Callable | None = None,
                        add_special_tokens: bool | None = None):
    """MC1: correct when the (single) true choice has a higher summed log-likelihood than every false one."""
    if not records:
        return float("nan"), []
    pairs, spans = [], []
    for r in records:
        p = format_prompt(tokenizer, TRUTHFULQA_PRIMER + "\n\nQ: " + r["question"])
        p += "A:" if p[-1:] in ("\n", " ") else " A:"
        sep = "" if p[-1:] in ("\n", " ") else " "
        start = len(pairs)
        pairs.extend((p, sep + c) for c in r["mc1_targets"]["choices"])
        spans.append((start, len(pairs)))
    if scorer is None:
        lps = sequence_logprobs(model, tokenizer, pairs, batch_size=batch_size, desc="truthfulqa",
                                add_special_tokens=add_special_tokens)
        sums = [float(lp.sum()) for lp in lps]
    else:
        sums = scorer(pairs)
    items = []
    for r, (a, b) in zip(records, spans):
        sc, labels = sums[a:b], r["mc1_targets"]["labels"]
        true = [s for s, lab in zip(sc, labels) if lab == 1]
        false = [s for s, lab in zip(sc, labels) if lab != 1]
        ok = bool(true) and (not false or true[0] > max(false))
        best = max(range(len(sc)), key=lambda j: sc[j])
        items.append({"query": r["question"], "answer": r["mc1_targets"]["choices"][labels.index(1)],
                      "output": r["mc1_targets"]["choices"][best], "score": float(ok)})
    return M.mean([it["score"] for it in items]), items


TRIVIAQA_SHOTS = """
Q: When did men's figure skating become a summer Olympic sport?
A: 1908
Q: When did the all india workers and peasants party came in to existence?
A: November 1925
Q: Flight that went down in the hudson river?
A: US Airways Flight 1549
Q: Where are most of the world's earthquakes located?
A: Rim of Fire
Q: Csi when do grissom and sara reunite?
A: series finale
Please briefly answer the following question:
"""


def evaluate_triviaqa(model, tokenizer, records, batch_size=8, gen_model=None, add_special_tokens: bool | None = None,
                      eos_ids: list[int] | None = None):
    """F1 (max over aliases) of the raw 30-token output; RWKU stops only at EOS here (no newline stop)."""
    if not records:
        return float("nan"), []
    prompts = [format_prompt(tokenizer, TRIVIAQA_SHOTS + f"Q: {r['question']}\n") + "A:" for r in records]
    outs = generate(gen_model or model, tokenizer, prompts, 30, stop_strings=(), batch_size=batch_size,
                    desc="triviaqa", **_gen_kw(add_special_tokens, eos_ids))
    items = [{"query": r["question"], "answer": r["answers"][:5], "output": o,
              "score": M.max_over_aliases(M.qa_f1, o, r["answers"])} for r, o in zip(records, outs)]
    return M.mean([it["score"] for it in items]), items


def evaluate_fluency(model, tokenizer, records, batch_size=8, gen_model=None, max_new_tokens=256,
                     word_tokenizer: str = "treebank", add_special_tokens: bool | None = None,
                     eos_ids: list[int] | None = None):
    """Mean n-gram entropy of the responses; ``word_tokenizer`` as ``metrics.ngram_entropy``."""
    if not records:
        return float("nan"), []
    prompts = [format_prompt(tokenizer, f"Instruction: {r['instruction']}\n") for r in records]
    outs = generate(gen_model or model, tokenizer, prompts, max_new_tokens, stop_strings=(), batch_size=batch_size,
                    desc="fluency", **_gen_kw(add_special_tokens, eos_ids))
    items = [{"query": r["instruction"], "answer": "", "output": o,
              "score": M.ngram_entropy(o, word_tokenizer=word_tokenizer)} for r, o in zip(records, outs)]
    return M.mean([it["score"] for it in items]), items


UTILITY_PARTS = {  # metric key -> (file stem, evaluator, generates text?)
    "Gen": ("retain_mmlu", evaluate_mmlu, False),
    "Rea": ("retain_bbh", evaluate_bbh, True),
    "Tru": ("truthful", evaluate_truthfulqa, False),
    "Fac": ("triviaqa", evaluate_triviaqa, True),
    "Flu": ("fluency", evaluate_fluency, True),
}


def evaluate_utility(
    model, tokenizer, target, limit=None, batch_size=8, gen_model=None, data_dir=None,
    parts: Sequence[str] = tuple(UTILITY_PARTS), long_gen_tokens: int = 256, bos: str = "single",
    stop: str = "all", bbh_stop: str = "question", fluency_tokenizer: str = "treebank",
) -> tuple[dict, dict, dict]:
    """Gen / Rea / Tru / Fac / Flu of one target's utility files (missing files are skipped); BBH and fluency
    generate ``long_gen_tokens`` new tokens (RWKU: 256). ``limit`` is an int or a per-part dict. ``bos``
    (UTILITY_BOS): "rwku" tokenizes every prompt with special tokens as RWKU's code does (two BOS on Llama-3);
    ``stop`` (STOP_IDS), ``bbh_stop`` (BBH_STOPS) and ``fluency_tokenizer`` (metrics.WORD_TOKENIZERS) as their
    functions.

    Returns ``(metrics, generations, timing)`` with per-part seconds in ``timing``."""
    tgt = _target(target, data_dir)
    special = True if _choice("utility bos", bos, UTILITY_BOS) == "rwku" else None
    eos = stop_ids(tokenizer, stop)
    metrics, gens, timing = {}, {}, {}
    for key in parts:
        stem, fn, generates = UTILITY_PARTS[key]
        if not tgt.has(stem):
            continue
        t0 = time.time()
        records = _limit(tgt.load(stem), limit.get(key) if isinstance(limit, dict) else limit)
        kw = {"gen_model": gen_model, "eos_ids": eos} if generates else {}
        kw["add_special_tokens"] = special
        if key in ("Rea", "Flu"):
            kw["max_new_tokens"] = long_gen_tokens
        if key == "Rea":
            kw["stop"] = bbh_stop
        if key == "Flu":
            kw["word_tokenizer"] = fluency_tokenizer
        metrics[key], gens[stem] = fn(model, tokenizer, records, batch_size=batch_size, **kw)
        if key == "Rea":  # RWKU's character-wise EM above, the whole-answer match beside it
            metrics["Rea_corrected"] = M.mean([it["score_corrected"] for it in gens[stem]])
        timing[key] = round(time.time() - t0, 2)
        logger.info("utility %s (%d %s records): %s in %.1fs", key, len(records), stem, metrics[key], timing[key])
    return metrics, gens, timing
