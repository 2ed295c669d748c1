"""Entry point: ``python -m verl.trainer.main config=examples/grpo_rj_rl.yaml key=value ...``

``config=`` names a YAML file (optional); every other argument is an OmegaConf dotlist override of
``verl.config.PPOConfig`` (unknown keys are errors).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import logging
import signal
import sys
import textwrap
import threading

import torch

from verl.config import PPOConfig, config_choices, load_config
from verl.trainer.ray_trainer import RayPPOTrainer


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass (the convention of verl/config.py)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):  # base classes first, so subclasses' docs win
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def config_help(cls: type = PPOConfig, prefix: str = "") -> list[str]:
    """One line per config key: ``key (default): doc``, nested sections recursively; a key that names one of a set
    (``config_choices``: registries included) ends with its choices."""
    lines, docs, choices = [], _field_docs(cls), config_choices()
    instance = cls()
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            lines.append(f"{key}: {docs.get(f.name, '')}")
            lines += config_help(type(value), key + ".")
        else:
            names = f" [choices: {' | '.join(choices[key])}]" if key in choices else ""
            lines.append(f"  {key} (default {value!r}): {docs.get(f.name, '')}{names}")
    return lines


USAGE = """usage: python -m verl.trainer.main [config=FILE.yaml] [key=value ...]

ReBO (RULE stage 2): on-policy RL of the refuse/answer boundary. config= names a YAML file (optional, e.g.
examples/grpo_rj_rl.yaml; examples/*_cpu.yaml for a CPU); every other argument is an OmegaConf dotlist override
(key=value, lists as key=[a,b], null for None). Precedence: defaults < YAML < overrides. An unknown key is an error.
Every key, with its default:
"""


def parse_args(argv: list[str]) -> tuple[str | None, list[str]]:
    config_file, overrides = None, []
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE + "\n".join(config_help()))
        raise SystemExit(0)
    for arg in argv:
        if "=" not in arg:
            raise SystemExit(f"argument {arg!r} is not key=value (usage: config=FILE.yaml key=value ...)")
        key, _, value = arg.partition("=")
        if key == "config":
            config_file = value
        else:
            overrides.append(arg.lstrip("-"))
    return config_file, overrides


def check_devices(config: PPOConfig) -> None:
    """Stop at once when the config asks for GPUs this machine does not have (Ray would wait for them forever)."""
    if config.trainer.device != "cuda":
        return

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have == 0:
        raise SystemExit("trainer.device=cuda but no CUDA GPU is visible: use a CPU config (examples/*_cpu.yaml) or "
                         "trainer.device=cpu")
    if config.trainer.n_workers > have:
        raise SystemExit(f"trainer.n_workers={config.trainer.n_workers} GPU workers but only {have} GPU(s) visible: "
                         f"set trainer.n_workers={have} or make more GPUs visible (CUDA_VISIBLE_DEVICES)")


SIGTERM_EXIT = 128 + signal.SIGTERM  # the shell's code for a process ended by SIGTERM


def _exit_on_sigterm(signum, frame) -> None:
    """SIGTERM as ``SystemExit``: the ``finally`` around the run closes the trainer as at a normal end. Further
    SIGTERMs are ignored so that they cannot cut that cleanup short (SIGKILL still ends the process)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.getLogger("verl.trainer").warning("SIGTERM: stopping; closing the workers, the vLLM engines and the run "
                                              "dir as at a normal end")
    raise SystemExit(SIGTERM_EXIT)


def install_sigterm_exit() -> None:
    """Make SIGTERM end the run through ``trainer.close()`` (main thread only; elsewhere the default stays)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def run(config: PPOConfig) -> list[dict]:
    """Train ``config`` to its end; a SIGTERM (the pipeline stopping a stage, a scheduler's preemption) ends it with
    exit code 143 after the same cleanup as a normal end: workers closed, vLLM engines shut down, a half-written
    checkpoint removed, the run dir's lock released. The previous SIGTERM handler is back afterwards.

    Decision: the handler is installed again once the trainer exists, because ``ray.init`` puts in its own, which
    kills the Ray processes (vLLM engines inside the workers included) before the trainer could close them."""
    check_devices(config)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        install_sigterm_exit()
        trainer = RayPPOTrainer(config)
        install_sigterm_exit()
        try:
            return trainer.fit()
        finally:
            trainer.close()
    finally:
        if previous is not None:
            with contextlib.suppress(ValueError):  # not the main thread: nothing was installed
                signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config_file, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    run(load_config(config_file, overrides))  # a ConfigError ends in one line through run_main


if __name__ == "__main__":
    from verl.utils.cli import run_main

    run_main(main)
