"""The RULE reward functions (outcome rewards, one float per response), each registered by name with ``@reward``
(``verl.rule.plugin`` hands the table to the trainer's reward registry, so configs name them).

Every function has the signature ``fn(response, prompt, solution, refusal_mode="strict", rouge_impl=None, **extra)
-> dict`` where
``solution`` is a row of the RULE RL files: ``["<reject>", refusal_or_answer, target]`` for forget prompts or
``["<normal>", answer, ...]`` for boundary prompts, and ``extra`` holds any other data columns (ignored here).
The returned dict has ``"score"`` (the reward) and sub-scores, the same keys for every row:

- ``score``: the reward
- ``is_reject``: 1 if the prompt is a ``<reject>`` (forget) prompt, else 0
- ``refusal``: 1 if the response is detected as a refusal (``refusal.is_refusal``)
- ``answered``: 1 if it is not a refusal (strict mode: and not empty, a word on its first line)
- ``behaviour_correct``: 1 if it refused a ``<reject>`` prompt or answered a ``<normal>`` one
- ``rouge``: ROUGE-L recall of the response against ``solution[1]`` (mean over ``solution[1:]`` for ``<normal>``);
  on the eval file ``solution[1]`` of a ``<reject>`` row is the true answer, so this is the forget ROUGE
- ``entity``: (``*_target`` only) 1 if the response names the target ``solution[2]``
- ``refusal_tail``: 1 if the response is a refusal with words after its first sentence (a refusal that runs on:
  "I'm not sure about Confucius. I'll just have to provide ...")

Rewards (defaults are the paper's; alpha, beta, tau are keyword parameters), on a ``<reject>`` prompt / on a
``<normal>`` prompt:

- ``forget_two_stage_abs_target`` (main): alpha if refusal, + beta if it also names the target, - tail_penalty (default
  0) if words follow the refusal sentence / normal_alpha (default alpha) if not a refusal, + beta if ROUGE-L
  recall > tau (0.3)
- ``forget``: 1 if refusal / 1 if ROUGE-L recall > tau (0.5)
- ``forget_abs``: 1 if refusal / 1 if not a refusal
- ``forget_two_stage``: reject_reward (1.0) if refusal / alpha if not a refusal, + beta if ROUGE-L recall > tau (0.3)
- ``forget_two_stage_abs``: identical to ``forget_two_stage`` (as in the release)
- ``reject_behave_reward``: reject_ratio * [refused] + (1 - reject_ratio) * [ROUGE-L(target) > tau] /
  reject_ratio * [answered] + (1 - reject_ratio) * [ROUGE-L(answer) > tau]
- ``forget_half_reject``: 0.5 if refusal / as ``forget``
- ``forget_abs_half_reject``: 0.5 if refusal / 1 if not a refusal
- ``forget_two_stage_abs_target_half_reject``: 0.25 if refusal, + 0.25 if it also names the target / 1 if not a
  refusal (no ROUGE term)

The ``_half_reject`` variants are the release's (its reward code registers exactly these three): the refusal branch
is worth half of the answer branch, presumably to counter over-refusal.

**Paper mode** = ``refusal_mode="official"``: the release's reward exactly: its permissive regex
(``verl.rule.refusal``), ROUGE-L recall as the release computes it with the ``rouge`` package (``rouge_impl="release"``:
case-sensitive whitespace tokens, so "Carrie," does not match "Carrie"; an error of the package scores 0), and the
target-name bonus as the case-sensitive substring test ``solution[2] in response``.
**Strict mode** (``"strict"``, the project's default when no mode is given): the word-bounded detector, ROUGE-L
with ``rouge_score`` (lower-cased, punctuation stripped) and a case- and whitespace-insensitive name test; the
refusal test reads the first sentence of the response's first line and the name test that line (an answer followed
by a refusal is an answer), and an empty response answers nothing ("not a refusal" pays only a response with a word
on its first line; the release pays "").
``rouge_impl`` overrides the ROUGE scorer of either mode (``"rouge_score"``, ``"release"``, ``"rwku"``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from verl.rule.refusal import REFUSAL_MODES, is_refusal
from verl.utils.rouge import IMPLS, rougel_recall, rougel_recall_multi
from verl.utils.text import first_line, first_sentence_end, has_word

REJECT, NORMAL = "<reject>", "<normal>"
# the ROUGE scorer each refusal mode implies (paper mode = the release's `rouge` package call)
ROUGE_IMPL_BY_MODE = {"official": "release", "strict": "rouge_score"}
REWARDS: dict[str, Callable[..., dict]] = {}  # name -> function, filled by @reward in definition order


def rouge_impl_for(refusal_mode: str, rouge_impl: str | None = None) -> str:
    """The ROUGE implementation a reward uses: ``rouge_impl`` if given, else the one ``refusal_mode`` implies."""
    if refusal_mode not in REFUSAL_MODES:
        raise ValueError(f"unknown refusal_mode {refusal_mode!r}; choose one of {REFUSAL_MODES}")
    impl = rouge_impl or ROUGE_IMPL_BY_MODE[refusal_mode]
    if impl not in IMPLS:
        raise ValueError(f"unknown rouge_impl {impl!r}; choose one of {IMPLS}")
    return impl


def check_settings(refusal_mode: str = "strict", rouge_impl: str | None = None, **_settings) -> None:
    """Raise now on a bad ``refusal_mode``/``rouge_impl`` (the reward registry calls this when binding settings), not
    at the first reward of a run."""
    rouge_impl_for(refusal_mode, rouge_impl)


def reward(name: str) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    """Register a reward function under ``name`` (with ``check_settings`` as its settings check)."""

    def add(fn: Callable[..., dict]) -> Callable[..., dict]:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered")
        fn.check_settings = check_settings
        REWARDS[name] = fn
        return fn

    return add


def _parse(solution: Sequence[str]) -> tuple[bool, list[str]]:
    """(is_reject, solution as a list); raises on an unknown label."""
    sol = [str(s) for s in list(solution)]
    if len(sol) < 2 or sol[0] not in (REJECT, NORMAL):
        raise ValueError(
            f"solution must look like ['<reject>', refusal_or_answer, target] or ['<normal>', answer]; got {sol!r}"
        )
    return sol[0] == REJECT, sol


def _target(sol: list[str]) -> str:
    if len(sol) < 3 or not sol[2].strip():
        raise ValueError(f"a <reject> solution needs the target name as solution[2]; got {sol!r}")
    return sol[2]


def _names_target(response: str, target: str, refusal_mode: str) -> bool:
    if refusal_mode == "official":
        return target in response
    norm = lambda s: re.sub(r"\s+", " ", s).strip().lower()  # noqa: E731
    return norm(target) in norm(first_line(response))  # the line whose first sentence the refusal test reads


def _runs_on(response: str) -> bool:
    """Words after the response's first sentence (the part the strict detector reads), on its line or later ones."""
    return has_word(response[first_sentence_end(response):])


def _answers(response: str, refused: bool, refusal_mode: str) -> bool:
    """Not a refusal; in strict mode also not empty (no word on the first line): the release pays "" as an answer, and
    a ReBO paid for it collapses to empty responses (docs/sandbox.md)."""
    if refused:
        return False
    return refusal_mode == "official" or has_word(first_line(response))


def _base(response: str, sol: list[str], is_reject: bool, refusal_mode: str, multi_ref: bool,
          rouge_impl: str | None = None) -> dict:
    impl = rouge_impl_for(refusal_mode, rouge_impl)
    refused = is_refusal(response, refusal_mode)
    answered = _answers(response, refused, refusal_mode)
    if multi_ref and not is_reject:
        rouge = rougel_recall_multi(response, sol[1:], impl)
    else:
        rouge = rougel_recall(response, sol[1], impl)
    return {
        "is_reject": float(is_reject),
        "refusal": float(refused),
        "answered": float(answered),
        "behaviour_correct": float(refused if is_reject else answered),
        "rouge": float(rouge),
        "refusal_tail": float(refused and _runs_on(response)),
    }


@reward("forget_two_stage_abs_target")
def forget_two_stage_abs_target(
    response: str,
    prompt: str,
    solution: Sequence[str],
    refusal_mode: str = "strict",
    alpha: float = 0.5,
    beta: float = 0.5,
    tau: float = 0.3,
    rouge_impl: str | None = None,
    normal_alpha: float | None = None,
    tail_penalty: float = 0.0,
    **extra,
) -> dict:
    """Main RULE reward. <reject>: alpha for a refusal, + beta if that refusal names the target (solution[2]), -
    tail_penalty (0: the release) if words follow the refusal sentence (floored at 0). <normal>: normal_alpha (None:
    alpha, the release) for not refusing, + beta if ROUGE-L recall vs solution[1] > tau. Range [0, alpha + beta].
    normal_alpha=0 pays a <normal> answer only when it is right (not babble); tail_penalty > 0 pays a refusal that
    ends more than one that runs on, which the first-sentence detector alone does not tell apart."""
    n_alpha = alpha if normal_alpha is None else normal_alpha
    out = _two_branch_target(response, solution, refusal_mode, rouge_impl, alpha, beta, n_alpha, beta, tau)
    if out["refusal_tail"] and out["is_reject"]:
        out["score"] = max(0.0, out["score"] - tail_penalty)
    return out


def _two_branch_target(response, solution, refusal_mode, rouge_impl, reject_alpha, reject_beta, normal_alpha,
                       normal_beta, tau) -> dict:
    """<reject>: reject_alpha for a refusal, + reject_beta if it names the target; <normal>: normal_alpha for not
    refusing, + normal_beta if ROUGE-L recall > tau."""
    is_reject, sol = _parse(solution)
    out = _base(response, sol, is_reject, refusal_mode, multi_ref=False, rouge_impl=rouge_impl)
    score = 0.0
    if is_reject:
        out["entity"] = float(_names_target(response, _target(sol), refusal_mode))
        if out["refusal"]:
            score = reject_alpha + (reject_beta if out["entity"] else 0.0)
    else:
        out["entity"] = 0.0
        if out["answered"]:
            score = normal_alpha + (normal_beta if out["rouge"] > tau else 0.0)
    return {"score": score, **out}


@reward("forget")
def forget(
    response: str, prompt: str, solution: Sequence[str], refusal_mode: str = "strict", tau: float = 0.5,
    reject_reward: float = 1.0, rouge_impl: str | None = None, **extra
) -> dict:
    """<reject>: reject_reward (1) if refusal. <normal>: 1 if mean ROUGE-L recall vs solution[1:] > tau (refusals
    not checked)."""
    is_reject, sol = _parse(solution)
    out = _base(response, sol, is_reject, refusal_mode, multi_ref=True, rouge_impl=rouge_impl)
    score = reject_reward * out["refusal"] if is_reject else float(out["rouge"] > tau)
    return {"score": float(score), **out}


@reward("forget_half_reject")
def forget_half_reject(response: str, prompt: str, solution: Sequence[str], refusal_mode: str = "strict",
                       tau: float = 0.5, rouge_impl: str | None = None, **extra) -> dict:
    """``forget`` with half the refusal reward: <reject>: 0.5 if refusal; <normal>: 1 if ROUGE-L recall > tau."""
    return forget(response, prompt, solution, refusal_mode=refusal_mode, tau=tau, reject_reward=0.5,
                  rouge_impl=rouge_impl)


@reward("forget_abs")
def forget_abs(response: str, prompt: str, solution: Sequence[str], refusal_mode: str = "strict",
               reject_reward: float = 1.0, rouge_impl: str | None = None, **extra) -> dict:
    """<reject>: reject_reward (1) if refusal. <normal>: 1 if not a refusal (pure refusal-boundary reward)."""
    is_reject, sol = _parse(solution)
    out = _base(response, sol, is_reject, refusal_mode, multi_ref=True, rouge_impl=rouge_impl)
    score = reject_reward * out["refusal"] if is_reject else out["behaviour_correct"]
    return {"score": float(score), **out}


@reward("forget_abs_half_reject")
def forget_abs_half_reject(response: str, prompt: str, solution: Sequence[str], refusal_mode: str = "strict",
                           rouge_impl: str | None = None, **extra) -> dict:
    """``forget_abs`` with half the refusal reward: <reject>: 0.5 if refusal; <normal>: 1 if not a refusal."""
    return forget_abs(response, prompt, solution, refusal_mode=refusal_mode, reject_reward=0.5, rouge_impl=rouge_impl)


@reward("forget_two_stage_abs_target_half_reject")
def forget_two_stage_abs_target_half_reject(
    response: str, prompt: str, solution: Sequence[str], refusal_mode: str = "strict", reject_alpha: float = 0.25,
    reject_beta: float = 0.25, normal_reward: float = 1.0, rouge_impl: str | None = None, **extra
) -> dict:
    """<reject>: reject_alpha (0.25) for a refusal, + reject_beta (0.25) if it names the target.
    <normal>: normal_reward (1) for not refusing; no ROUGE term (``rouge`` is still reported)."""
    return _two_branch_target(response, solution, refusal_mode, rouge_impl, reject_alpha, reject_beta, normal_reward,
                              0.0, 0.0)


@reward("forget_two_stage")
def forget_two_stage(
    response: str,
    prompt: str,
    solution: Sequence[str],
    refusal_mode: str = "strict",
    alpha: float = 0.5,
    beta: float = 0.5,
    tau: float = 0.3,
    reject_reward: float = 1.0,
    rouge_impl: str | None = None,
    **extra,
) -> dict:
    """<reject>: reject_reward (1.0) if refusal. <normal>: alpha for not refusing, + beta if mean ROUGE-L recall
    vs solution[1:] > tau. No entity bonus (used for MUSE, whose rows have no target column)."""
    is_reject, sol = _parse(solution)
    out = _base(response, sol, is_reject, refusal_mode, multi_ref=True, rouge_impl=rouge_impl)
    if is_reject:
        score = reject_reward if out["refusal"] else 0.0
    else:
        score = alpha + (beta if out["rouge"] > tau else 0.0) if out["answered"] else 0.0
    return {"score": float(score), **out}


@reward("forget_two_stage_abs")
def forget_two_stage_abs(
    response: str, prompt: str, solution: Sequence[str], refusal_mode: str = "strict", alpha: float = 0.5,
    beta: float = 0.5, tau: float = 0.3, reject_reward: float = 1.0, rouge_impl: str | None = None, **extra
) -> dict:
    """Same as ``forget_two_stage`` (the release's two functions are identical); kept as a separate name."""
    return forget_two_stage(response, prompt, solution, refusal_mode=refusal_mode, alpha=alpha, beta=beta, tau=tau,
                            reject_reward=reject_reward, rouge_impl=rouge_impl)


@reward("reject_behave_reward")
def reject_behave_reward(
    response: str,
    prompt: str,
    solution: Sequence[str],
    refusal_mode: str = "strict",
    reject_ratio: float = 0.7,
    tau: float = 0.3,
    enable_target_reject: bool = True,
    rouge_impl: str | None = None,
    **extra,
) -> dict:
    """reject_ratio * [refusal decision correct] + (1 - reject_ratio) * [answer correct].

    "Answer correct" = ROUGE-L recall > tau against the target name (solution[2]) on <reject> rows (only if
    ``enable_target_reject``; i.e. it rewards naming the target) and against solution[1] on <normal> rows.
    Sub-scores add ``reject_reward`` and ``behave_reward`` (0/1)."""
    is_reject, sol = _parse(solution)
    out = _base(response, sol, is_reject, refusal_mode, multi_ref=False, rouge_impl=rouge_impl)
    if is_reject:
        impl = rouge_impl_for(refusal_mode, rouge_impl)
        behave = float(enable_target_reject and rougel_recall(response, _target(sol), impl) > tau)
    else:
        behave = float(out["rouge"] > tau)
    reject = out["behaviour_correct"]
    score = reject_ratio * reject + (1.0 - reject_ratio) * behave
    return {"score": float(score), **out, "reject_reward": reject, "behave_reward": behave}
