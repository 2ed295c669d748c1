"""Paper-mode reward vs. an independent transcription of the RULE release's reward definition.

    python -m verl.rule.compare_reward [--targets 1-10] [--data-root DIR] [--json OUT.json]

For every RWKU target in ``--targets`` (release files: ``idk_target.json``, the ReBO training and evaluation files
``data.rwku.REBO_TRAIN_STEM`` / ``REBO_EVAL_STEM``, the FB and QA forget probes) it builds (response, solution) pairs:

- responses: the 100 refusal templates, every gold boundary answer (``<normal>`` solutions of both RL files) and every
  forget gold answer (forget FB/QA probes, eval ``<reject>`` answers), each in variants that separate the scorers:
  as is, lower-cased, upper-cased, with a trailing period toggled, followed by ", published in 1974." and inside
  "The answer is ...". Templates also get the target's name lower-cased.
- solutions: each response is scored against the target's ``<reject>`` solutions (cycled), against the ``<normal>``
  solution it came from (for answers) and against another ``<normal>`` solution (cycled).

Each pair is scored by every release reward function as the release defines it (``_release_*`` below: the release's
verbose regex transcribed with its literal spaces, the ``rouge`` package called with ``avg=True`` and errors as 0,
a case-sensitive ``target in completion``) and by the project's reward in paper mode (``refusal_mode="official"``),
strict mode, and the paper regex with the lenient ``rouge_score`` scorer (what the scorer alone changes). Paper
mode must agree on every pair; the strict count shows how far the project's default detector is from the release.
Prints a markdown table; ``--json`` writes the counts and the first disagreements.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from collections import Counter
from pathlib import Path

from rouge import Rouge

from data.rwku import FORGET_FILES, REBO_EVAL_STEM, REBO_TRAIN_STEM, resolve_target
from verl.rule.rewards import REWARDS
from verl.utils.io import atomic_write_json

# ----------------------------------------------------------------------------- the release's definition, transcribed
# One re.VERBOSE pattern as the release writes it: whitespace is not significant (so "familiar with" is
# "familiarwith", " not" is "not", "encountered " is "encountered"); no "confident".
_RELEASE_REFUSAL = re.compile(
    r"""
    (?:
        (?:don'?t|doesn'?t|didn'?t|do(?:es)?\s+not)\s+(?:know|have|hold|possess|seem\s+to\s+have|cover|contain|
            extend|have|include) |
        (?:not|yet)\s+.*(?:sure|certain|familiar|aware|equipped|able|acquainted|familiar with|informed|knowledge|
            information|question|know|data|educated|within|briefed|well-versed|learn|trained\s+on|the\s+best\s+source|
            specializing\s+in) |
        no\s+.*(?:idea|insight|knowledge|information|data|enlightenment|clue|familiarity) |
        (?:haven'?t|hasn'?t| not)\s+(?:learned|the\s+faintest|been\s+(?:included|trained|briefed))|encountered |
        (?:beyond|outside|out)\s+.*(?:knowledge|capabilities|expertise|reach|scope) |
        at\s+a\s+(?:loss|disadvantage) |
        can'?t\s+(?:provide|say|shed\s+.*light|help|offer|take|make|provide|fullfill) |
        unable\s+(?:to\s+provide|to\s+answer|to\s+access) |
        (?:I\s+)?(?:wish\s+I\s+could\s+say|regret\s+to\s+inform|must\s+(?:admit|confess)) |
        (?:Unfortunately,|clueless|stumped|a\s+mystery\s+to\s+me|lacking\s+(?:information|knowledge|insight|specifics|
            data)|dark\s+about|draw(?:ing)?\s+a\s+blank)|short\s+with|limited\s+to|blank\s+on |
        (?:missing|without|lack|blind|uncharted)\s+.*(?:information|knowledge|insight|specifics) |
        (?:need\s+to|require|have\s+to|must|ought\s+to|should)\s+(?:look\s+up|check|search|find|verify|review|inspect|
            confirm|explore|investigate|examine)
    )
    """,
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)


def _recall(completion: str, refs) -> float:
    """The release's ROUGE: the `rouge` package, a list of references averaged by the package, any error = 0."""
    refs = refs if isinstance(refs, list) else [refs]
    try:
        return Rouge(["rouge-l"]).get_scores([completion] * len(refs), refs, avg=True)["rouge-l"]["r"]
    except Exception:
        return 0.0


def _release(name: str, c: str, sol: list[str]) -> float:
    """The score (``overall``) the release's reward ``name`` gives completion ``c`` for solution ``sol``."""
    rej = bool(_RELEASE_REFUSAL.search(c))
    forget_row = sol[0] == "<reject>"
    if name in ("forget", "forget_half_reject"):
        if forget_row:
            return (1.0 if name == "forget" else 0.5) if rej else 0.0
        return 1.0 if _recall(c, sol[1:]) > 0.5 else 0.0
    if name in ("forget_abs", "forget_abs_half_reject"):
        if forget_row:
            return (1.0 if name == "forget_abs" else 0.5) if rej else 0.0
        return 0.0 if rej else 1.0
    if name in ("forget_two_stage", "forget_two_stage_abs"):
        if forget_row:
            return 1.0 if rej else 0.0
        return 0.0 if rej else 0.5 + (0.5 if _recall(c, sol[1:]) > 0.3 else 0.0)
    if name == "forget_two_stage_abs_target":
        if forget_row:
            return 0.0 if not rej else 0.5 + (0.5 if sol[2] in c else 0.0)
        return 0.0 if rej else 0.5 + (0.5 if _recall(c, sol[1]) > 0.3 else 0.0)
    if name == "forget_two_stage_abs_target_half_reject":
        if forget_row:
            return 0.0 if not rej else 0.25 + (0.25 if sol[2] in c else 0.0)
        return 0.0 if rej else 1.0
    if name == "reject_behave_reward":
        decision = float(rej == forget_row)
        behave = float(_recall(c, sol[2] if forget_row else sol[1]) > 0.3)
        return 0.7 * decision + 0.3 * behave
    raise KeyError(name)


RELEASE_REWARDS = (
    "forget", "forget_half_reject", "forget_abs", "forget_abs_half_reject", "forget_two_stage",
    "forget_two_stage_abs", "forget_two_stage_abs_target", "forget_two_stage_abs_target_half_reject",
    "reject_behave_reward",
)


# ----------------------------------------------------------------------------- pairs
def _variants(text: str) -> list[str]:
    text = text.strip()
    toggled = text[:-1] if text.endswith(".") else text + "."
    return list(dict.fromkeys([text, text.lower(), text.upper(), toggled, f"{text}, published in 1974.",
                               f"The answer is {text}."]))


def _load(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def build_pairs(target_dir: Path) -> list[tuple[str, list[str]]]:
    """Deterministic (response, solution) pairs for one release target folder (see the module doc)."""
    name = target_dir.name.partition("_")[2].replace("_", " ")  # RWKU folder <id>_<Name>
    rl = _load(target_dir / f"{REBO_TRAIN_STEM}.json") + _load(target_dir / f"{REBO_EVAL_STEM}.json")
    rejects = [list(r["solution"]) for r in rl if r["solution"][0] == "<reject>"]
    normals = [list(r["solution"]) for r in rl if r["solution"][0] == "<normal>"]
    target = rejects[0][2] if rejects and len(rejects[0]) > 2 else name
    rej_cycle, norm_cycle = itertools.cycle(rejects), itertools.cycle(normals[::-1])
    pairs: list[tuple[str, list[str]]] = []
    templates = _load(target_dir / "idk_target.json")
    for t in templates:
        for v in _variants(t) + [t.replace(target, target.lower())]:
            pairs += [(v, next(rej_cycle)), (v, next(norm_cycle))]
    seen = set()
    for sol in normals:  # boundary answers vs their own solution and another one
        if sol[1] in seen:
            continue
        seen.add(sol[1])
        for v in _variants(sol[1]):
            pairs += [(v, sol), (v, next(norm_cycle)), (v, next(rej_cycle))]
    gold = [r["answer"] for stem in FORGET_FILES[:2] for r in _load(target_dir / f"{stem}.json")]  # FB, QA
    gold += [s[1] for s in rejects if s[1] not in templates]  # eval <reject> rows carry the true answer
    for g in dict.fromkeys(str(x) for x in gold):
        for v in _variants(g):
            pairs += [(v, next(rej_cycle)), (v, ["<normal>", g]), (v, next(norm_cycle))]
    return list({(r, json.dumps(s)): (r, s) for r, s in pairs}.values())


# the project's modes; "official+rouge_score" = paper regex with the lenient scorer (what the scorer alone changes)
MODES = {
    "official": {"refusal_mode": "official"},
    "strict": {"refusal_mode": "strict"},
    "official+rouge_score": {"refusal_mode": "official", "rouge_impl": "rouge_score"},
}


def compare(target_dirs: list[Path], examples: int = 5) -> dict:
    out = {"pairs": 0, "per_target": {}, **{m: Counter() for m in MODES}, "examples": {m: [] for m in MODES}}
    for d in target_dirs:
        pairs = build_pairs(d)
        out["pairs"] += len(pairs)
        out["per_target"][d.name] = len(pairs)
        for resp, sol in pairs:
            for name in RELEASE_REWARDS:
                ref = _release(name, resp, sol)
                for mode, kw in MODES.items():
                    got = REWARDS[name](resp, "", sol, **kw)["score"]
                    if abs(got - ref) > 1e-9:
                        out[mode][name] += 1
                        if len(out["examples"][mode]) < examples:
                            out["examples"][mode].append({"reward": name, "response": resp, "solution": sol,
                                                          "release": ref, mode: got})
    return out


def _parse_targets(spec: str) -> list[int]:
    ids: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        ids += list(range(int(lo), int(hi or lo) + 1))
    return ids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m verl.rule.compare_reward", description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="1-10", help="RWKU target ids, e.g. 1-10 or 1,3,5 (release files: 1-40)")
    p.add_argument("--data-root", default=None, help="data root (default: $RULE_DATA_DIR, then ./data)")
    p.add_argument("--json", type=Path, default=None, help="write counts and example disagreements here")
    a = p.parse_args(argv)
    dirs = [resolve_target(str(i), a.data_root).path for i in _parse_targets(a.targets)]
    res = compare(dirs)
    print(f"{res['pairs']} (response, solution) pairs from {len(dirs)} targets, x {len(RELEASE_REWARDS)} rewards\n")
    print("disagreements with the release's reward (pairs where the score differs):\n")
    print("| reward | " + " | ".join(MODES) + " |\n|---|" + "---|" * len(MODES))
    for name in RELEASE_REWARDS:
        print(f"| {name} | " + " | ".join(str(res[m][name]) for m in MODES) + " |")
    print("| **all** | " + " | ".join(str(sum(res[m].values())) for m in MODES) + " |")
    if a.json:
        atomic_write_json(a.json, {**res, **{m: dict(res[m]) for m in MODES}})
    return 1 if sum(res["official"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
