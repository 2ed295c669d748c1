#!/usr/bin/env bash
# RWKU experiment "baselines": METHODS="ga npo simnpo rt". Every run_rwku.sh variable applies
# (MODEL, TARGETS, BUDGET, INJECT, GPUS, ...); the experiment name keeps results apart in log/rwku/<EXP>/.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export METHODS="${METHODS:-ga npo simnpo rt}" EXP="${EXP:-baselines}"
exec bash run_rwku.sh "$@"
