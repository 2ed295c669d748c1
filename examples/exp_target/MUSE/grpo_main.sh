#!/usr/bin/env bash
# MUSE-Books experiment: RS -> ReBO (GRPO, reward forget_two_stage_abs) -> MUSE evaluation. Variables as run_muse.sh.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export METHODS="${METHODS:-rule_grpo}" EXP_MUSE="${EXP_MUSE:-grpo_main}"
exec bash run_muse.sh "$@"
