#!/usr/bin/env bash
# RWKU experiment "rpp": METHODS="rule_rpp". Every run_rwku.sh variable applies
# (MODEL, TARGETS, BUDGET, INJECT, GPUS, ...); the experiment name keeps results apart in log/rwku/<EXP>/.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export METHODS="${METHODS:-rule_rpp}" EXP="${EXP:-rpp}"
exec bash run_rwku.sh "$@"
