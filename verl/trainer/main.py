"""Entry point: ``python -m verl.trainer.main config=examples/grpo_rj_rl.yaml key=value ...``

``config=`` names a YAML file (optional); every other argument is an OmegaConf dotlist override of
``verl.config.PPOConfig`` (unknown keys are errors).
"""

from __future__ import annotations

import logging
import sys

from verl.config import PPOConfig, load_config


def parse_args(argv: list[str]) -> tuple[str | None, list[str]]:
    config_file, overrides = None, []
    for arg in argv:
        if "=" not in arg:
            raise SystemExit(f"argument {arg!r} is not key=value (usage: config=FILE.yaml key=value ...)")
        key, _, value = arg.partition("=")
        if key == "config":
            config_file = value
        else:
            overrides.append(arg.lstrip("-"))
    return config_file, overrides


def run(config: PPOConfig) -> list[dict]:
    from verl.trainer.ray_trainer import RayPPOTrainer

    trainer = RayPPOTrainer(config)
    try:
        return trainer.fit()
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config_file, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    run(load_config(config_file, overrides))  # a ConfigError ends in one line through run_main


if __name__ == "__main__":
    from verl.utils.cli import run_main

    run_main(main)
