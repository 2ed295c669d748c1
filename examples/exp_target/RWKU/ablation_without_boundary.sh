#!/usr/bin/env bash
# RWKU experiment "ablation_without_boundary": METHODS="rule_grpo" with REBO_DATA=reject_only. Every run_rwku.sh variable applies
# (MODEL, TARGETS, BUDGET, INJECT, GPUS, ...); the experiment name keeps results apart in log/rwku/<EXP>/.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export METHODS="${METHODS:-rule_grpo}" EXP="${EXP:-ablation_without_boundary}" REBO_DATA=reject_only
exec bash run_rwku.sh "$@"
