"""Reward functions by name (``REWARDS``, filled by plug-ins) or ``path/to/file.py:function``, and batch scoring.

A reward is ``fn(response, prompt, solution, **settings_and_extras) -> dict`` with a ``"score"`` key (every other key
is a sub-score the trainer logs). A registered function may carry ``fn.check_settings(**settings)``, called when
settings are bound, so a bad value fails at load rather than at the first reward.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from verl.utils.registry import Registry

RewardFn = Callable[..., dict]
_POSITIONAL = ("response", "prompt", "solution")

REWARDS: Registry[RewardFn] = Registry("reward function")


def _load_from_file(spec: str) -> RewardFn:
    path_str, _, fn_name = spec.rpartition(":")
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"reward file {str(path)!r} (from {spec!r}) does not exist")
    if not fn_name.isidentifier():
        raise ValueError(f"reward spec {spec!r}: {fn_name!r} after ':' is not a function name")
    mod_name = f"_rule_reward_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot import reward file {str(path)!r}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    module_spec.loader.exec_module(module)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise AttributeError(f"reward file {str(path)!r} has no function {fn_name!r}")
    return fn


def get_reward_fn(name_or_path: str, **kwargs) -> RewardFn:
    """A reward function by registered name (``REWARDS``) or ``"path/to/file.py:function"``.

    ``kwargs`` (e.g. ``refusal_mode="official"``, ``tau=0.3``) are bound with ``functools.partial``; a keyword the
    function does not accept raises ``TypeError`` now rather than at the first call. A file-based function must
    accept ``(response, prompt, solution, **extra)`` and return a dict with a ``"score"`` key.
    """
    from_file = ":" in name_or_path and name_or_path.rpartition(":")[0].endswith(".py")
    if from_file:
        fn = _load_from_file(name_or_path)
    else:
        try:
            fn = REWARDS.lookup(name_or_path)
        except ValueError as exc:
            raise ValueError(f"{exc}, or 'path/to/file.py:function'") from None
    if kwargs:
        params = inspect.signature(fn).parameters
        takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        named = [k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD and k not in _POSITIONAL]
        unknown = [k for k in kwargs if k not in params or k in _POSITIONAL]
        # a registered reward's **extra is for data columns, not settings: a misspelt setting must not vanish there;
        # a file-based reward with **extra may take anything
        if unknown and (not from_file or not takes_var_kw):
            raise TypeError(
                f"reward function {name_or_path!r} does not accept {unknown} (worker.reward.kwargs); "
                f"its settings are {named}"
            )
        check = getattr(fn, "check_settings", None)
        if check is not None:
            check(**kwargs)
        fn = functools.partial(fn, **kwargs)
    return fn


def score_batch(
    fn: RewardFn,
    responses: Sequence[str],
    prompts: Sequence[str],
    solutions: Sequence[Sequence[str]],
    extras: Sequence[dict] | None = None,
) -> tuple[list[float], dict[str, list[float]]]:
    """Apply ``fn`` row by row. Returns (scores, sub_scores) where sub_scores maps every non-``score`` key seen
    to a list of length B (NaN where a row lacked that key). Raises if lengths differ or a result has no score."""
    n = len(responses)
    extras = list(extras) if extras is not None else [{} for _ in range(n)]
    if not (len(prompts) == len(solutions) == len(extras) == n):
        raise ValueError(
            f"score_batch: {n} responses, {len(prompts)} prompts, {len(solutions)} solutions, {len(extras)} extras"
        )
    results = []
    for resp, prompt, sol, extra in zip(responses, prompts, solutions, extras):
        # data columns that shadow the positional arguments are dropped rather than raising a TypeError
        kw = {k: v for k, v in (extra or {}).items() if k not in _POSITIONAL}
        res = fn(resp, prompt, sol, **kw)
        if not isinstance(res, dict) or "score" not in res:
            raise TypeError(f"reward function must return a dict with a 'score' key, got {res!r}")
        results.append(res)
    scores = [float(r["score"]) for r in results]
    keys: list[str] = []
    for r in results:
        keys += [k for k in r if k != "score" and k not in keys]
    sub = {k: [float(r[k]) if k in r else math.nan for r in results] for k in keys}
    return scores, sub
