#!/usr/bin/env bash
# The whole RULE pipeline over RWKU targets: [knowledge injection] -> Rejection Steering -> ReBO (+ baselines)
# -> evaluation -> table + Pareto plot (verl/pipeline). Settings by environment variable or flag:
# `bash run_rwku.sh --help` lists them; `--dry-run` prints the plan.
cd "$(dirname "$0")" && exec python -m verl.pipeline rwku "$@"
