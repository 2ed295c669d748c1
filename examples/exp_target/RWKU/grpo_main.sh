#!/usr/bin/env bash
# RWKU experiment "grpo_main": METHODS="rule_grpo". Every run_rwku.sh variable applies
# (MODEL, TARGETS, BUDGET, INJECT, GPUS, ...); the experiment name keeps results apart in log/rwku/<EXP>/.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export METHODS="${METHODS:-rule_grpo}" EXP="${EXP:-grpo_main}"
exec bash run_rwku.sh "$@"
