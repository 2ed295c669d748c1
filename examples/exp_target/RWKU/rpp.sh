#!/usr/bin/env bash
# RWKU experiment "rpp": RULE with Reinforce++.
# Every run_rwku.sh variable and flag applies (`--help`); results go to log/rwku/${EXP:-rpp}/.
cd "$(dirname "$0")/../../.." && METHODS=${METHODS:-rule_rpp} EXP=${EXP:-rpp} exec python -m verl.pipeline rwku "$@"
