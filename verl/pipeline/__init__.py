"""The RULE pipeline in Python (``python -m verl.pipeline rwku|muse``); see verl/pipeline/cli.py."""
