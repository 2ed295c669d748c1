#!/usr/bin/env bash
# MUSE-Books experiment "grpo_main": RS -> ReBO (GRPO, reward forget_two_stage_abs) -> MUSE evaluation.
# Every run_muse.sh variable and flag applies (`--help`); results go to log/muse/${EXP_MUSE:-grpo_main}/.
cd "$(dirname "$0")/../../.." && METHODS=${METHODS:-rule_grpo} EXP_MUSE=${EXP_MUSE:-grpo_main} exec python -m verl.pipeline muse "$@"
