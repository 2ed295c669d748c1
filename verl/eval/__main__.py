"""``python -m verl.eval``: see verl/eval/cli.py."""

from verl.eval.cli import main
from verl.utils.cli import run_main

if __name__ == "__main__":
    run_main(main)
