#!/usr/bin/env bash
# The whole RULE pipeline on MUSE-Books: ReBO data -> Rejection Steering -> ReBO -> evaluation -> table
# (verl/pipeline). Settings by environment variable or flag: `bash run_muse.sh --help`; `--dry-run` prints the plan.
cd "$(dirname "$0")" && exec python -m verl.pipeline muse "$@"
