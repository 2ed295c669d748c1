#!/usr/bin/env bash
# RWKU experiment "ppo": RULE with PPO (critic + GAE).
# Every run_rwku.sh variable and flag applies (`--help`); results go to log/rwku/${EXP:-ppo}/.
cd "$(dirname "$0")/../../.." && METHODS=${METHODS:-rule_ppo} EXP=${EXP:-ppo} exec python -m verl.pipeline rwku "$@"
