#!/usr/bin/env bash
# RWKU experiment "ppo": METHODS="rule_ppo". Every run_rwku.sh variable applies
# (MODEL, TARGETS, BUDGET, INJECT, GPUS, ...); the experiment name keeps results apart in log/rwku/<EXP>/.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export METHODS="${METHODS:-rule_ppo}" EXP="${EXP:-ppo}"
exec bash run_rwku.sh "$@"
