#!/usr/bin/env bash
# RWKU experiment "baselines": GA, NPO, SimNPO and RT.
# Every run_rwku.sh variable and flag applies (`--help`); results go to log/rwku/${EXP:-baselines}/.
cd "$(dirname "$0")/../../.." && METHODS=${METHODS:-"ga npo simnpo rt"} EXP=${EXP:-baselines} exec python -m verl.pipeline rwku "$@"
