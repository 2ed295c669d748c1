#!/usr/bin/env bash
# RWKU ablation "without RS": ReBO (GRPO) starts from the original model (examples/ablations/without_rs.yaml).
# Every run_rwku.sh variable and flag applies (`--help`); results go to log/rwku/${EXP:-ablation_without_rs}/.
cd "$(dirname "$0")/../../.." && METHODS=${METHODS:-rule_grpo} EXP=${EXP:-ablation_without_rs} exec python -m verl.pipeline rwku --overlay examples/ablations/without_rs.yaml "$@"
