"""``python -m verl.eval``: see verl/eval/cli.py."""

from verl.eval.cli import main

if __name__ == "__main__":
    main()
