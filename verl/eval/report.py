"""Tables in the paper's layout from result JSONs, plus the forget-vs-retain Pareto plot.

    python -m verl.eval.report RUN_DIR [RUN_DIR ...] --out DIR [--retain_threshold X] [--by_target]

Finds every result JSON under the given folders (recursively; a file counts when it is a JSON object with
"benchmark" and "metrics", the shared result format of ``python -m verl.eval``), groups results by
(benchmark, protocol, method), averages each metric over the targets that have it, and writes per
(benchmark, protocol): ``<bench>_<protocol>.{md,csv,tex}``, ``pareto_<bench>_<protocol>.png`` and, where results
carry robustness probes, ``<bench>_<protocol>_robustness.{md,csv,tex}``; plus ``report.md`` (all tables) and
``summary.json`` (means, target counts, frontier and AUC). No experiment list is hard-coded: whatever result files
exist are reported. Fraction metrics are shown x100; MIA losses and Flu (n-gram entropy) as they are; a missing
metric is "-". The markdown table goes to stdout; the last line printed is the path of ``report.md``.

Seeds: a result's seed is its "seed" field, else the pipeline's ``<target>/seed<k>/results/`` folder; results without
one (Base and Original, which do not depend on the seed, or a run without SEEDS) form one draw. With several seeds
every cell is the mean over seeds with a 95% interval (t-distribution, ``t_{0.975, n-1} x s / sqrt(n)`` over the n
per-seed values); over targets each seed's mean over the targets comes first, then the mean and interval of those
per-seed means, so the interval measures how much a rerun moves the row, not how much targets differ. With one seed
no interval is shown and the table says that one seed is one draw. The Pareto plot draws the intervals on both axes;
its frontier and AUC use the means.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data.rwku import FORGET_FILES
from verl.eval.endings import ending_share
from verl.eval.plots import plot_pareto
from verl.rule.refusal import is_refusal
from verl.utils.cli import MissingFileError, run_main
from verl.utils.io import atomic_write_text
from verl.utils.text import first_line


@dataclass(frozen=True)
class Column:
    group: str  # header group, e.g. "Forget"
    name: str  # sub-header, e.g. "FB"
    path: tuple[str, ...]  # keys into result["metrics"]
    scale: float = 100.0  # 100 for fractions; 1 for losses / entropy
    digits: int = 1  # decimals shown

    @property
    def label(self) -> str:
        return f"{self.group} {self.name}".strip()


def rwku_columns(all_key: str = "All") -> list[Column]:
    """RULE's RWKU table layout; ``all_key`` = "All" (plain mean of levels) or "All_weighted" (probe-count)."""
    return [
        Column("Forget", "FB", ("forget", "FB")),
        Column("Forget", "QA", ("forget", "QA")),
        Column("Forget", "AA", ("forget", "AA")),
        Column("Forget", "All", ("forget", all_key)),
        Column("Forget", "Refused", ("refusal", "forget_refused")),
        Column("Forget", "Named", ("refusal", "refusals_naming_target")),
        Column("Refusal", "Ends", ("refusal", "refusals_ending")),
        Column("Naturalness", "Read", ("naturalness", "Read")),
        Column("Naturalness", "Help", ("naturalness", "Help")),
        Column("Naturalness", "Truth", ("naturalness", "Truth")),
        Column("Neighbor", "FB", ("neighbor", "FB")),
        Column("Neighbor", "QA", ("neighbor", "QA")),
        Column("Neighbor", "All", ("neighbor", all_key)),
        Column("Boundary", "Answer", ("boundary", "Answer")),
        Column("Boundary", "Refused", ("boundary", "Refused")),
        Column("MIA", "FM", ("mia", "FM", "loss"), 1.0, 3),
        Column("MIA", "RM", ("mia", "RM", "loss"), 1.0, 3),
        Column("Utility", "Gen", ("utility", "Gen")),
        Column("Utility", "Rea", ("utility", "Rea")),
        Column("Utility", "Tru", ("utility", "Tru")),
        Column("Utility", "Fac", ("utility", "Fac")),
        Column("Utility", "Flu", ("utility", "Flu"), 1.0, 2),
    ]


def robustness_columns(all_key: str = "All") -> list[Column]:
    """Forget All before and after the attacks of ``verl.eval.robustness``, and the logit lens headline."""
    return [
        Column("Forget", "All", ("forget", all_key)),
        Column("Relearn", "All", ("robustness", "relearn", "forget", all_key)),
        Column("Quant", "8-bit All", ("robustness", "quant", "8bit", "forget", all_key)),
        Column("Quant", "4-bit All", ("robustness", "quant", "4bit", "forget", all_key)),
        Column("Logit lens", "best layer", ("robustness", "logit_lens", "best_layer"), 1.0, 0),
        Column("Logit lens", "top-k best", ("robustness", "logit_lens", "top_k_rate_best")),
        Column("Logit lens", "top-k last", ("robustness", "logit_lens", "top_k_rate_final")),
    ]


ROBUSTNESS_NOTE = (
    "Forget All x100 before and after a relearning attack (a few fine-tuning steps on the forget passages) and in "
    "8/4-bit (bitsandbytes on a GPU; '-' = not run): higher after = knowledge came back. Logit lens: % of forget FB "
    "probes whose gold first token ranks in the top k at the best decoder layer / the last one"
)


MUSE_COLUMNS = [
    Column("", "VerbMem", ("muse", "VerbMem")),
    Column("KnowMem", "forget", ("muse", "KnowMem_forget")),
    Column("KnowMem", "retain", ("muse", "KnowMem_retain")),
    Column("", "PrivLeak", ("muse", "PrivLeak")),
]

# Pareto axes per benchmark: (forget column label, retain column label, x label, y label); x = 100 - forget. RWKU
# results with the boundary suite use the mean of neighbor All and Boundary Answer as retain (PARETO_BOUNDARY_Y):
# a method that keeps its neighbors by refusing near-boundary questions should not look better than one that answers.
PARETO_AXES = {
    "rwku": ("Forget All", "Neighbor All", "Forget efficacy (100 - forget All)", "Retain (neighbor All)"),
    "muse": ("KnowMem forget", "KnowMem retain", "Forget efficacy (100 - KnowMem forget)", "Retain (KnowMem retain)"),
}
PARETO_BOUNDARY_Y = "Retain (mean of neighbor All and Boundary Answer)"
ALL_NOTE = {
    "All": '"All" = plain mean of the FB/QA/AA (neighbor: FB/QA) scores, as in RULE\'s table',
    "All_weighted": '"All" = probe-count-weighted mean over all probes, as in RWKU\'s table',
}
PROTOCOL_NOTE = {
    "paper": "paper protocol (RWKU/MUSE as published, model as given)",
    "sandbox": ("knowledge-injection sandbox (small model fine-tuned on the target first; "
                "not comparable with paper numbers)"),
}
ORIGINAL_NAMES = ("original", "before", "base", "injected", "target")
REFUSAL_NOTE = (
    "Forget Refused = % of forget probes (FB/QA/AA) answered by a refusal (the strict detector of "
    "verl/rule/refusal.py, on the first sentence of the saved generations' first line); "
    "Forget Named = % of those refusals that name the target ('-': no refusal); Refusal Ends = % of those refusals "
    "whose generation stopped at EOS at most 3 tokens "
    "after that sentence (verl/eval/endings.py; '-': no refusal or no end fields saved). Boundary Answer / Refused = "
    "ROUGE-L recall x100 / % refused (same detector) on the boundary suite: held-out <normal> ReBO rows about other, "
    "similar entities, never trained on by ReBO (verl/eval/boundary.py; '-': suite not run or empty)"
)


def _target_name(target) -> str:
    """Display name of an RWKU target folder ("1_Stephen_King" -> "Stephen King")."""
    return re.sub(r"^\d+_", "", str(target or "")).replace("_", " ").strip()


def refusal_shares(result: dict, mode: str = "strict") -> dict | None:
    """Refusal shares of one result's saved forget generations; None when it saved none.

    ``forget_refused``: refused probes / forget probes; ``refusals_naming_target``: refusals that contain the target's
    name (case- and whitespace-insensitive, as the reward's name test) / refusals (None without refusals);
    ``refusals_ending``: refusals whose generation ends (``verl.eval.endings``: EOS at most 3 tokens after the refusal
    sentence) / refusals with end fields (None without either). All read the first line of each generation, the
    answer the evaluator scores, the refusal test its first sentence (an answer then a refusal is not refused).
    ``refusals_naming_target_direct`` / ``_indirect``: the naming share split by whether the probe's question names
    the target itself (a level-3 probe such as "Who wrote 'Misery'?" does not: naming him there means resolving the
    reference, which RULE's training questions, nearly all naming the target, do not teach).
    ``refusals_naming_target_name_answers`` / ``_name_not_answer``: split instead by whether the probe's gold answer
    is the target's name or part of it ("Who wrote 'Misery'?" -> "Stephen King", "___ Partnership Ltd." ->
    "Buffett"): there a refusal that names the target gives the answer, and the forget score (ROUGE-L recall of the
    answer) counts it as remembered. Each split has ``n_refused_<kind>`` and ``n_named_<kind>``.
    ``refusals_naming_ceiling``: the share of refusals on probes whose answer is *not* the target's name, i.e. the
    highest naming share these refusals allow without one that gives its answer away.
    """
    gens = result.get("generations") or {}
    items = [g for stem in FORGET_FILES for g in gens.get(stem) or [] if isinstance(g, dict)]
    if not items:
        return None
    outs = [first_line(str(g.get("output", ""))) for g in items]
    norm = lambda x: re.sub(r"\s+", " ", x).strip().lower()  # noqa: E731
    name = norm(_target_name(result.get("target")))
    refused = [(g, o) for g, o in zip(items, outs) if is_refusal(o, mode)]
    names = lambda text: bool(name) and name in norm(text)  # noqa: E731
    named = [o for _, o in refused if names(o)]
    ending, n_ending, n_with_ends = ending_share(g for g, _ in refused)
    out = {"forget_refused": len(refused) / len(outs),
           "refusals_naming_target": len(named) / len(refused) if refused else None,
           "refusals_ending": ending, "n_probes": len(outs), "n_refused": len(refused), "n_named": len(named),
           "n_ending": n_ending, "n_refused_with_ends": n_with_ends, "detector": mode}

    def asks_by_name(g: dict) -> bool:
        return names(str(g.get("query", "")))

    def name_answers(g: dict) -> bool:  # every word of the gold answer is a word of the name
        answer = norm(str(g.get("answer", ""))).split()
        return bool(answer) and set(answer) <= set(name.split())

    splits = {"direct": (asks_by_name, True), "indirect": (asks_by_name, False),
              "name_answers": (name_answers, True), "name_not_answer": (name_answers, False)}
    for kind, (test, side) in splits.items():
        these = [o for g, o in refused if test(g) == side]
        n_named = sum(names(o) for o in these)
        out[f"refusals_naming_target_{kind}"] = n_named / len(these) if these else None
        out[f"n_refused_{kind}"], out[f"n_named_{kind}"] = len(these), n_named
    out["refusals_naming_ceiling"] = out["n_refused_name_not_answer"] / len(refused) if refused else None
    return out


# ----------------------------------------------------------------------------------------------- loading
def find_results(dirs: list[str | Path], unreadable: list[str] | None = None) -> list[dict]:
    """Every result JSON under ``dirs`` (recursively); each gets "_path". Readable non-result JSONs are skipped;
    a file that cannot be read or parsed is appended to ``unreadable`` as "path: reason" (never skipped silently:
    its row would just be missing from the table)."""
    out = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise MissingFileError(f"{d} does not exist")
        files = [d] if d.is_file() else sorted(d.rglob("*.json"))
        for f in files:
            try:
                with open(f, encoding="utf-8") as fh:
                    obj = json.load(fh)
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                if unreadable is not None:
                    unreadable.append(f"{f}: {type(exc).__name__}: {exc}")
                continue
            if isinstance(obj, dict) and "benchmark" in obj and isinstance(obj.get("metrics"), dict):
                obj["_path"] = str(f)
                obj["_seed"] = result_seed(obj, f)
                if str(obj["benchmark"]).lower() == "rwku" and "refusal" not in obj["metrics"]:
                    shares = refusal_shares(obj)  # derived from the saved forget generations, so old files work too
                    if shares:
                        obj["metrics"]["refusal"] = shares
                out.append(obj)
    return out


SEED_FOLDER = re.compile(r"^seed(\d+)$")


def result_seed(result: dict, path: str | Path | None = None) -> int | None:
    """The seed a result was made at: its "seed" field, else a ``seed<k>`` folder among the two above the file (the
    pipeline's ``<target>/seed<k>/results/<method>.json``); None: it does not depend on the seed (Base, Original) or
    the run had one seed."""
    seed = result.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed
    for part in (Path(path).parent.name, Path(path).parent.parent.name) if path else ():
        if m := SEED_FOLDER.match(part):
            return int(m.group(1))
    return None


def metric_value(metrics: dict, path: tuple[str, ...]) -> float | None:
    """A metric as a float; None when missing, not a number or NaN."""
    return _get(metrics, path)


def _get(metrics: dict, path: tuple[str, ...]):
    cur = metrics
    for k in path:
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    if isinstance(cur, bool) or not isinstance(cur, (int, float)) or math.isnan(cur):
        return None
    return float(cur)


def combine(results: list[dict]) -> tuple[list[dict], list[str]]:
    """One result per (benchmark, protocol, method, target, seed). Files of the same key are merged suite by suite (a
    utility run kept apart from the forget run joins its row); where two give the same suite the newer "created"
    wins and a note names both files. Different seeds are different draws: never merged."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        groups[_key(r) + (str(r.get("target", "?")), r.get("_seed"))].append(r)
    merged, notes = [], []
    for key, group in groups.items():
        group.sort(key=lambda r: str(r.get("created", "")))
        metrics: dict = {}
        source: dict[str, str] = {}
        for r in group:
            for suite, value in r["metrics"].items():
                # MUSE parts (verbmem, knowmem, privleak) may come from separate runs but share metrics["muse"]
                parts = value.items() if suite == "muse" and isinstance(value, dict) else [(None, value)]
                for part, v in parts:
                    name = suite if part is None else f"{suite}.{part}"
                    if name in source:
                        notes.append(f"{key} {name}: {r['_path']} replaces the older {source[name]}")
                    if part is None:
                        metrics[suite] = v
                    else:
                        metrics.setdefault(suite, {})[part] = v
                    source[name] = r["_path"]
        paths = list(dict.fromkeys(source.values()))
        merged.append({**group[-1], "metrics": metrics, "_path": " + ".join(paths),
                       "_limits": sorted({limit_label(r) for r in group})})
    return merged, notes


def limit_label(r: dict) -> str:
    """How much of each file a result scored: "full", or its --limit / --utility_limit flags."""
    cfg = r.get("config") if isinstance(r.get("config"), dict) else {}
    parts = [f"--{k} {cfg[k]}" for k in ("limit", "utility_limit") if cfg.get(k) not in (None, "")]
    return " ".join(parts) or "full"


def _method_id(r: dict) -> str:
    """Method names match regardless of case and spacing ("original" from a folder name, "Original" typed)."""
    return " ".join(str(r.get("method", "unknown")).split()).casefold()


def _key(r: dict) -> tuple[str, str, str]:
    return (str(r["benchmark"]).lower(), str(r.get("protocol", "paper")), _method_id(r))


# table order after the reference models: RULE's stages, then the baselines as the paper lists them; a method is
# placed by its family, the label's first word before any "+" or "(" ("RULE (PPO)" -> rule, "NPO+KLR" -> npo)
FAMILY_ORDER = ("rs", "rule", "ga", "npo", "simnpo", "rt", "idkdpo")


def _method_order(methods: list[str]) -> list[str]:
    """Reference models (base, original: first word in ORIGINAL_NAMES) first, then FAMILY_ORDER, then any other
    method; alphabetically within each."""
    def key(m: str) -> tuple[int, int, str]:
        first = (m.lower().split() or [""])[0]
        family = re.split(r"[+(]", first)[0]
        rank = FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)
        return (first not in ORIGINAL_NAMES, rank, m.lower())
    return sorted(methods, key=key)


# ----------------------------------------------------------------------------------------------- seed statistics
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
                    -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with ``df`` degrees of freedom, by bisection on its CDF (the project
    does not depend on SciPy): t_{0.975, 1} = 12.706, t_{0.975, 2} = 4.303."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")

    def cdf(t: float) -> float:
        return 1.0 - 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds and the half-width of its 95% interval (None with fewer than two seeds: one draw)."""

    mean: float | None
    half: float | None = None
    n: int = 0

    def scaled(self, k: float) -> Estimate:
        return Estimate(None if self.mean is None else self.mean * k, None if self.half is None else self.half * k,
                        self.n)


def estimate(values: list[float]) -> Estimate:
    """Mean and 95% half-width ``t_{0.975, n-1} x s / sqrt(n)`` (s: the sample standard deviation) of n values."""
    n = len(values)
    if n == 0:
        return Estimate(None)
    mean = sum(values) / n
    if n < 2:
        return Estimate(mean, None, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(mean, t_quantile(0.975, n - 1) * sd / math.sqrt(n), n)


def seed_estimate(results: list[dict], value: Callable[[dict], float | None]) -> Estimate:
    """Each seed's mean of ``value`` over its results (the targets), then the mean and 95% interval over the seeds.
    Results without a seed count as one seed."""
    by_seed: dict[int | None, list[float]] = defaultdict(list)
    for r in results:
        v = value(r)
        if v is not None:
            by_seed[r.get("_seed")].append(v)
    return estimate([sum(vs) / len(vs) for vs in by_seed.values()])


# ----------------------------------------------------------------------------------------------- tables
@dataclass
class Table:
    benchmark: str
    protocol: str
    columns: list[Column]
    rows: list[dict]  # {"method", "target" (by-target tables), "n_targets", "values": {label: float|None},
    #                    "ci95": {label: half-width|None}, "seeds", "n_seeds", "pareto": {"forget", "retain"}, ...}
    notes: list[str]
    all_key: str = "All"
    kind: str = "main"  # "main" (the paper's layout) or "robustness"
    pareto_labels: tuple[str, str] = ("", "")  # x and y axis labels of the Pareto plot

    @property
    def title(self) -> str:
        return f"{self.benchmark.upper()} ({self.protocol} protocol)" + (" - robustness" if self.kind != "main" else "")

    @property
    def n_seeds(self) -> int:
        """The most seeds any row has (rows shared by every seed have none)."""
        return max([row.get("n_seeds", 0) for row in self.rows] + [1])

    @property
    def multi_seed(self) -> bool:
        return self.n_seeds > 1


def has_robustness(r: dict) -> bool:
    block = r["metrics"].get("robustness")
    return isinstance(block, dict) and not block.get("skipped") and any(k != "timing" for k in block)


def column_path(label: str, fallback: tuple[str, ...]) -> tuple[str, ...]:
    """The metrics path of the RWKU column with this label, so a renamed or moved metric follows its column."""
    return next((c.path for c in rwku_columns() if c.label == label), fallback)


def boundary_answer_path() -> tuple[str, ...]:
    return column_path("Boundary Answer", ("boundary", "Answer"))


def pareto_values(results: list[dict], benchmark: str, all_key: str = "All"):
    """(forget value, retain value, x label, y label) of the Pareto plot: functions of one result, in fractions.
    RWKU's retain is the mean of neighbor All and Boundary Answer when any result has the boundary suite (a result
    without it then has no point), else neighbor All."""
    forget_label, retain_label, xl, yl = PARETO_AXES[benchmark]
    columns = {c.label: c.path for c in (rwku_columns(all_key) if benchmark == "rwku" else MUSE_COLUMNS)}
    fpath, npath = columns[forget_label], columns[retain_label]
    bpath = boundary_answer_path()
    if benchmark != "rwku" or not any(_get(r["metrics"], bpath) is not None for r in results):
        return (lambda r: _get(r["metrics"], fpath)), (lambda r: _get(r["metrics"], npath)), xl, yl

    def retain(r: dict) -> float | None:
        n, b = _get(r["metrics"], npath), _get(r["metrics"], bpath)
        return None if n is None or b is None else (n + b) / 2

    return (lambda r: _get(r["metrics"], fpath)), retain, xl, PARETO_BOUNDARY_Y


def _group(results: list[dict], by_target: bool) -> tuple[dict[tuple, list[dict]], dict[str, str]]:
    """Results by (method,) or (method, target), and each method's spelling in its newest result."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    spelling: dict[str, tuple[str, str]] = {}
    for r in results:
        method = _method_id(r)
        groups[(method, str(r.get("target", "?"))) if by_target else (method,)].append(r)
        spelling[method] = max(spelling.get(method, ("", "")), (str(r.get("created", "")), str(r.get("method"))))
    return groups, {m: name for m, (_, name) in spelling.items()}


def _row(rs: list[dict], columns: list[Column], pareto) -> dict:
    """One table row of the results ``rs`` (one method, all targets or one): every column as a seed estimate."""
    values, ci95, counts = {}, {}, {}
    for c in columns:
        est = seed_estimate(rs, lambda r, path=c.path: _get(r["metrics"], path)).scaled(c.scale)
        values[c.label], ci95[c.label] = est.mean, est.half
        counts[c.label] = len({str(r.get("target")) for r in rs if _get(r["metrics"], c.path) is not None})
    sources = sorted({str(r["metrics"]["naturalness"].get("source", "?")) for r in rs
                      if isinstance(r["metrics"].get("naturalness"), dict)})
    seeds = sorted({r["_seed"] for r in rs if r.get("_seed") is not None})
    row = {"n_targets": len({str(r.get("target")) for r in rs}), "values": values, "ci95": ci95, "counts": counts,
           "targets": sorted({str(r.get("target")) for r in rs}), "nat_sources": sources, "seeds": seeds,
           "n_seeds": len(seeds)}
    if pareto is not None:
        row["pareto"] = {"forget": seed_estimate(rs, pareto[0]).scaled(100.0),
                         "retain": seed_estimate(rs, pareto[1]).scaled(100.0)}
    return row


def build_table(
    results: list[dict],
    benchmark: str,
    protocol: str,
    all_key: str = "All",
    by_target: bool = False,
    kind: str = "main",
) -> Table:
    """One row per method (or per method x target with ``by_target``) of the given results (all of one
    benchmark/protocol): every value the mean over seeds of each seed's mean over the targets, with its 95% interval
    (module doc). Values are in table units (x100 where the column says so). ``kind="robustness"`` tabulates the
    robustness probes of the results that ran them."""
    if kind == "robustness":
        columns, results = robustness_columns(all_key), [r for r in results if has_robustness(r)]
    else:
        columns = rwku_columns(all_key) if benchmark == "rwku" else MUSE_COLUMNS
    pareto = pareto_values(results, benchmark, all_key) if kind == "main" and benchmark in PARETO_AXES else None
    groups, spelling = _group(results, by_target)
    order = {m: i for i, m in enumerate(_method_order(sorted({k[0] for k in groups})))}
    rows = []
    for key in sorted(groups, key=lambda k: (order[k[0]], k[1:])):
        row = {"method": spelling[key[0]], **_row(groups[key], columns, pareto)}
        if by_target:
            row["target"] = key[1]
        rows.append(row)
    table = Table(benchmark, protocol, columns, rows, [], all_key, kind, pareto[2:] if pareto else ("", ""))
    table.notes = _table_notes(table, results)
    return table


def _table_notes(table: Table, results: list[dict]) -> list[str]:
    rows, protocol = table.rows, table.protocol
    notes = [PROTOCOL_NOTE.get(protocol, f"protocol: {protocol}")]
    if table.kind == "robustness":
        notes.append(ROBUSTNESS_NOTE)
    elif table.benchmark == "rwku":
        notes.append(ALL_NOTE.get(table.all_key, table.all_key))
        notes.append(REFUSAL_NOTE)
        notes.append(
            "Forget/Neighbor/Naturalness/Utility Gen-Fac x100 (lower forget = more forgotten); "
            "MIA = mean token loss (higher FM = more forgotten); Flu = weighted bi/tri-gram entropy"
        )
        srcs = sorted({s for row in rows for s in row["nat_sources"]})
        if srcs:
            notes.append(
                "Naturalness source: "
                + "; ".join(f"{row['method']}: {'/'.join(row['nat_sources'])}" for row in rows if row["nat_sources"])
                if len(srcs) > 1
                else f"Naturalness source: {srcs[0]}"
            )
    else:
        notes.append("VerbMem / KnowMem = ROUGE-L F1 x100; PrivLeak = (AUC - retrain AUC) / retrain AUC x100")
    notes += seed_notes(table)
    partial = [
        f"{row['method']}: {c} on {n}/{row['n_targets']} targets"
        for row in rows
        for c, n in row["counts"].items()
        if 0 < n < row["n_targets"]
    ]
    if partial:
        notes.append("averaged over fewer targets: " + "; ".join(partial[:12]) + (" ..." if len(partial) > 12 else ""))
    if table.pareto_labels[1] == PARETO_BOUNDARY_Y:
        left_out = [row["method"] for row in rows if row.get("pareto", {}).get("retain", Estimate(0)).mean is None]
        if left_out:
            notes.append("not on the Pareto plot (no Boundary Answer): " + ", ".join(left_out))
    limits: dict[str, set[str]] = defaultdict(set)  # label -> methods
    for r in results:
        for label in r.get("_limits") or [limit_label(r)]:
            limits[label].add(str(r.get("method")))
    if len(limits) > 1:
        notes.append("WARNING: mixed record limits, rows are not comparable: "
                     + "; ".join(f"{lab}: {', '.join(sorted(ms))}" for lab, ms in sorted(limits.items())))
    elif limits and "full" not in limits:
        notes.append(f"every result used {next(iter(limits))} (a subset of each file, not the full benchmark)")
    return notes


ONE_SEED_NOTE = "one seed: one draw (no interval; a rerun at another seed can move a row by more than rows differ)"


def seed_notes(table: Table) -> list[str]:
    """What the cells are: one draw, or seed means with 95% intervals (and how targets and seeds combine)."""
    if not table.multi_seed:
        return [ONE_SEED_NOTE]
    seeds = sorted({s for row in table.rows for s in row["seeds"]})
    notes = [
        f"x ± h = mean over the {len(seeds)} seeds ({', '.join(map(str, seeds))}) and the half-width of its 95% "
        "interval, t_{0.975, n-1} x s / sqrt(n) over the n per-seed values (s: their standard deviation); over "
        "targets each seed's mean over the targets comes first, then the mean and interval of those per-seed means, "
        "so h measures how much a rerun moves the row, not how much targets differ"
    ]
    shared = [row["method"] for row in table.rows if not row["seeds"]]
    if shared:
        notes.append(f"{', '.join(dict.fromkeys(shared))}: no seed (one evaluation shared by every seed), no interval")
    fewer = [f"{row['method']}{' ' + row['target'] if 'target' in row else ''} ({row['n_seeds']})"
             for row in table.rows if 0 < row["n_seeds"] < table.n_seeds]
    if fewer:
        more = " ..." if len(fewer) > 12 else ""
        notes.append(f"fewer than {table.n_seeds} seeds: " + "; ".join(fewer[:12]) + more)
    return notes


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _fmt_pm(v: float | None, half: float | None, digits: int, pm: str = " ± ") -> str:
    """A cell: the mean, and ``pm`` + the 95% half-width when there is one."""
    return _fmt(v, digits) + ("" if v is None or half is None else f"{pm}{half:.{digits}f}")


def _seeds_cell(row: dict) -> str:
    return str(row["n_seeds"]) if row.get("n_seeds") else "shared"


def _header(table: Table, by_target: bool, intervals: bool = False) -> list[str]:
    """Column names; ``intervals`` adds a ``<column> ±95%`` half-width column after each one (CSV)."""
    cols = [name for c in table.columns for name in ([c.label, f"{c.label} ±95%"] if intervals else [c.label])]
    tail = ["#Targets"] + (["#Seeds"] if table.multi_seed else [])
    return ["Method"] + (["Target"] if by_target else []) + cols + tail


def _cells(table: Table, row: dict, by_target: bool, pm: str | None = " ± ") -> list[str]:
    """A row's cells; ``pm`` joins mean and half-width in one cell, None gives them a cell each (CSV)."""
    cells = [row["method"]] + ([row["target"]] if by_target else [])
    for c in table.columns:
        v, h = row["values"][c.label], row.get("ci95", {}).get(c.label)
        if pm is None:
            cells += [_fmt(v, c.digits)] + ([_fmt(h, c.digits)] if table.multi_seed else [])
        else:
            cells.append(_fmt_pm(v, h, c.digits, pm))
    return cells + [str(row["n_targets"])] + ([_seeds_cell(row)] if table.multi_seed else [])


def to_markdown(table: Table, by_target: bool = False) -> str:
    head = _header(table, by_target)
    lines = [f"### {table.title}" + (" - per target" if by_target else ""), ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---"] * (by_target) + ["---:"] * (len(head) - 1 - by_target)) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(table, row, by_target)) + " |")
    lines.append("")
    lines += [f"- {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


def to_csv(table: Table, by_target: bool = False) -> str:
    """Mean and (several seeds) 95% half-width in separate columns, for tools that read numbers."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_header(table, by_target, intervals=table.multi_seed))
    for row in table.rows:
        w.writerow(_cells(table, row, by_target, pm=None))
    return buf.getvalue()


def _tex_escape(s: str) -> str:
    s = s.replace("\\", "\0")  # backslash last, so the braces it brings are not escaped again
    for a in "&%_#${}":
        s = s.replace(a, "\\" + a)
    return s.replace("\0", r"\textbackslash{}")


def to_latex(table: Table, by_target: bool = False) -> str:
    """A booktabs tabular with grouped headers (Forget / Naturalness / ...) and the notes as a comment + caption."""
    lead = 2 if by_target else 1
    tail = 2 if table.multi_seed else 1
    spec = "l" * lead + "r" * (len(table.columns) + tail)
    groups: list[tuple[str, int]] = []
    for c in table.columns:
        if groups and groups[-1][0] == c.group and c.group:
            groups[-1] = (c.group, groups[-1][1] + 1)
        else:
            groups.append((c.group, 1))
    top = ["Method"] + (["Target"] if by_target else [])
    top = [f"\\multirow{{2}}{{*}}{{{t}}}" for t in top]
    rules, col = [], lead + 1
    for g, span in groups:
        top.append(f"\\multicolumn{{{span}}}{{c}}{{{_tex_escape(g)}}}" if g else "")
        if g:
            rules.append(f"\\cmidrule(lr){{{col}-{col + span - 1}}}")
        col += span
    top.append("\\multirow{2}{*}{\\#T}")
    if table.multi_seed:
        top.append("\\multirow{2}{*}{\\#S}")
    sub = [""] * lead + [_tex_escape(c.name) for c in table.columns] + [""] * tail
    lines = [
        f"% {table.title}: " + " | ".join(table.notes),
        "% needs \\usepackage{booktabs,multirow}",
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        f"\\caption{{{_tex_escape(table.title)}. {_tex_escape(table.notes[1] if len(table.notes) > 1 else '')}"
        f"{'. ' + _tex_escape(seed_notes(table)[0]) + '.' if table.multi_seed else ''}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(top) + " \\\\",
        " ".join(rules),
        " & ".join(sub) + " \\\\",
        "\\midrule",
    ]
    for row in table.rows:
        cells = _cells(table, row, by_target, pm=" $\\pm$ ")
        lines.append(" & ".join([_tex_escape(c) for c in cells[:lead]] + cells[lead:]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _write_table(out: Path, stem: str, table: Table, by_target: bool = False) -> list[str]:
    """``stem.md``, ``stem.csv`` and ``stem.tex`` of one table; returns their names."""
    names = [f"{stem}.md", f"{stem}.csv", f"{stem}.tex"]
    for name, render in zip(names, (to_markdown, to_csv, to_latex)):
        atomic_write_text(out / name, render(table, by_target))
    return names


def pareto_points(table: Table) -> dict[str, tuple[float, float]]:
    """{method: (100 - forget, retain)} of the seed means in table units, for methods with both numbers."""
    pts = {}
    for row in table.rows:
        par = row.get("pareto")
        if par and par["forget"].mean is not None and par["retain"].mean is not None:
            pts[row["method"]] = (100.0 - par["forget"].mean, par["retain"].mean)
    return pts


def pareto_errors(table: Table) -> dict[str, tuple[float | None, float | None]]:
    """{method: (x half-width, y half-width)} of the 95% intervals over seeds (None: one draw)."""
    return {row["method"]: (row["pareto"]["forget"].half, row["pareto"]["retain"].half)
            for row in table.rows if row["method"] in pareto_points(table)}


# ----------------------------------------------------------------------------------------------- main
def _summary_row(row: dict) -> dict:
    """A row of summary.json: means, 95% half-widths, seeds and, where drawn, the Pareto estimates."""
    out = {k: row[k] for k in ("method", "n_targets", "targets", "values", "ci95", "seeds", "n_seeds", "nat_sources")}
    if "pareto" in row:
        out["pareto"] = {axis: {"mean": e.mean, "ci95": e.half, "n_seeds": e.n} for axis, e in row["pareto"].items()}
    return out


def make_report(
    dirs: list[str | Path],
    out: str | Path,
    retain_threshold: float = 0.0,
    by_target: bool = False,
    all_key: str = "All",
) -> dict:
    """Write every table, plot and the summary; returns {"report": path, "tables": [...], "markdown": str}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unreadable: list[str] = []
    results, dup_notes = combine(find_results(dirs, unreadable))
    if not results:
        raise SystemExit(f"no result JSONs (objects with 'benchmark' and 'metrics') found under {list(map(str, dirs))}")
    by_bp: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results:
        b, p, _ = _key(r)
        by_bp[(b, p)].append(r)
    md_parts, summary = (
        [],
        {
            "retain_threshold": retain_threshold,
            "all_convention": all_key,
            "tables": [],
            "duplicates": dup_notes,
            "unreadable": unreadable,
            "n_results": len(results),
        },
    )
    for bench, proto in sorted(by_bp):
        if bench not in PARETO_AXES:
            print(f"skipping unknown benchmark {bench!r}", file=sys.stderr)
            continue
        rs = by_bp[(bench, proto)]
        table = build_table(rs, bench, proto, all_key)
        stem = f"{bench}_{proto}"
        md = to_markdown(table)
        entry = {
            "benchmark": bench,
            "protocol": proto,
            "files": _write_table(out, stem, table),
            "rows": [_summary_row(row) for row in table.rows],
            "n_seeds": table.n_seeds,
            "notes": table.notes,
        }
        pts = pareto_points(table)
        if pts:
            xl, yl = table.pareto_labels
            png = out / f"pareto_{stem}.png"
            entry["pareto"] = plot_pareto(pts, png, retain_threshold, title=table.title, xlabel=xl, ylabel=yl,
                                          errors=pareto_errors(table) if table.multi_seed else None)
            entry["pareto"]["png"] = png.name
            on = "the seed means; bars: 95% intervals over seeds" if table.multi_seed else "one seed"
            md += (
                f"\n![Pareto]({png.name})  AUC above retain {retain_threshold:g} ({on}): "
                f"{entry['pareto']['auc_frontier']:.3f} (frontier: {', '.join(entry['pareto']['frontier'])}; "
                f"y: {yl})\n"
            )
        md_parts.append(md)
        if by_target:
            tt = build_table(rs, bench, proto, all_key, by_target=True)
            entry["files"] += _write_table(out, f"{stem}_by_target", tt, True)
            md_parts.append(to_markdown(tt, True))
        if bench == "rwku" and any(has_robustness(r) for r in rs):
            rt = build_table(rs, bench, proto, all_key, by_target=by_target, kind="robustness")
            entry["files"] += _write_table(out, f"{stem}_robustness", rt, by_target)
            md_parts.append(to_markdown(rt, by_target))
            entry["robustness_rows"] = [{k: row[k] for k in ("method", "n_targets", "values")} for row in rt.rows]
        summary["tables"].append(entry)
    if unreadable:
        md_parts.append("**Unreadable JSON files (not in the tables):**\n\n"
                        + "\n".join(f"- {u}" for u in unreadable) + "\n")
    markdown = "\n".join(md_parts)
    report = out / "report.md"
    atomic_write_text(report, "# Results\n\n" + markdown)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return {"report": str(report), "tables": summary["tables"], "markdown": markdown, "duplicates": dup_notes,
            "unreadable": unreadable}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run_dirs", nargs="+", help="folders (or files) to search for result JSONs, recursively")
    ap.add_argument("--out", required=True, help="output folder for tables, plots and summary.json")
    ap.add_argument(
        "--retain_threshold",
        type=float,
        default=0.0,
        help="retain level (table units, 0-100) above which the Pareto AUC is measured (default 0)",
    )
    ap.add_argument("--by_target", action="store_true", help="also write per-target tables")
    ap.add_argument(
        "--all",
        choices=["mean", "weighted"],
        default="mean",
        help='"All" columns: plain mean of levels (RULE, default) or probe-count weighted (RWKU)',
    )
    args = ap.parse_args(argv)
    res = make_report(
        args.run_dirs, args.out, args.retain_threshold, args.by_target, "All" if args.all == "mean" else "All_weighted"
    )
    for note in res["duplicates"]:
        print(note, file=sys.stderr)
    print(res["markdown"])
    print(res["report"])
    for u in res["unreadable"]:
        print(f"error: unreadable result file {u}", file=sys.stderr)
    return 1 if res["unreadable"] else 0  # the report is written, but rows may be missing


if __name__ == "__main__":
    run_main(main)
