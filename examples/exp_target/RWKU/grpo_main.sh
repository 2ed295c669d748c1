#!/usr/bin/env bash
# RWKU experiment "grpo_main": RULE with GRPO.
# Every run_rwku.sh variable and flag applies (`--help`); results go to log/rwku/${EXP:-grpo_main}/.
cd "$(dirname "$0")/../../.." && METHODS=${METHODS:-rule_grpo} EXP=${EXP:-grpo_main} exec python -m verl.pipeline rwku "$@"
