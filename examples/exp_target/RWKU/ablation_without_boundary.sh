#!/usr/bin/env bash
# RWKU ablation "without boundary": ReBO sees only <reject> prompts (examples/ablations/without_boundary.yaml).
# Every run_rwku.sh variable and flag applies (`--help`); results go to log/rwku/${EXP:-ablation_without_boundary}/.
cd "$(dirname "$0")/../../.." && METHODS=${METHODS:-rule_grpo} EXP=${EXP:-ablation_without_boundary} exec python -m verl.pipeline rwku --overlay examples/ablations/without_boundary.yaml "$@"
