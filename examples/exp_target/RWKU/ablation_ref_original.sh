#!/usr/bin/env bash
# RWKU ablation "reference = original": KL to the original model, not RS (examples/ablations/ref_original.yaml).
# Every run_rwku.sh variable and flag applies (`--help`); results go to log/rwku/${EXP:-ablation_ref_original}/.
cd "$(dirname "$0")/../../.." && METHODS=${METHODS:-rule_grpo} EXP=${EXP:-ablation_ref_original} exec python -m verl.pipeline rwku --overlay examples/ablations/ref_original.yaml "$@"
