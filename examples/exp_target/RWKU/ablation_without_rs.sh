#!/usr/bin/env bash
# RWKU experiment "ablation_without_rs": METHODS="rule_grpo" with REBO_START=original. Every run_rwku.sh variable applies
# (MODEL, TARGETS, BUDGET, INJECT, GPUS, ...); the experiment name keeps results apart in log/rwku/<EXP>/.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export METHODS="${METHODS:-rule_grpo}" EXP="${EXP:-ablation_without_rs}" REBO_START=original
exec bash run_rwku.sh "$@"
