#!/usr/bin/env bash
# RWKU experiment "ablation_ref_original": METHODS="rule_grpo" with REBO_REF=original. Every run_rwku.sh variable applies
# (MODEL, TARGETS, BUDGET, INJECT, GPUS, ...); the experiment name keeps results apart in log/rwku/<EXP>/.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export METHODS="${METHODS:-rule_grpo}" EXP="${EXP:-ablation_ref_original}" REBO_REF=original
exec bash run_rwku.sh "$@"
