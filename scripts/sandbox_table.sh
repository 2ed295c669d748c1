#!/usr/bin/env bash
# The sandbox tables (knowledge-injection sandbox, embedded model), judged on seed means:
#   bash scripts/sandbox_table.sh official   # targets 1-5 (official RULE files)
#   bash scripts/sandbox_table.sh synth      # two targets without official files (template synthesis), default 56 57
# Rows: Base, Original, RS and METHODS (default RULE (GRPO), GA, NPO, SimNPO, RT). Columns (report.md): Forget
# FB/QA/AA/All, Forget Refused (share of forget probes refused), Forget Named (share of refusals naming the target),
# Refusal Ends, Naturalness (proxy), Neighbor FB/QA/All, Boundary Answer/Refused (MIA too with
# SUITES=forget,neighbor,boundary,naturalness,mia);
# per-target rows, the Pareto plot (forget All against the mean of neighbor All and Boundary Answer) and the goals
# (one table per RULE row: scripts/sandbox_goals.py).
# SEEDS (default 1,2,3): RS, ReBO and the baselines run once per seed (one run's forget All varies widely with the
# seed: docs/sandbox.md), the injection and the Base/Original evaluations once; every cell is the seed mean with its 95% interval
# and the goals are judged on the means. SEEDS=1 gives one draw. Any pipeline variable passes through (BUDGET,
# RS_STEPS, REBO_STEPS, LOG_DIR, ...); BUDGET=test makes it a plumbing check of a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-official}; shift || true
export INJECT=1 BUDGET=${BUDGET:-smoke} LOG_DIR=${LOG_DIR:-log}
export METHODS=${METHODS:-"rule_grpo ga npo simnpo rt"}
export SEEDS=${SEEDS:-1,2,3}
export OVERLAYS="${OVERLAYS:-} scripts/sandbox_table.yaml"
case "$mode" in
  official)
    export TARGETS=${TARGETS:-"1 2 3 4 5"} EXP=${EXP:-sandbox_${BUDGET}};;
  synth)
    # RS and ReBO files built offline from the passages (data.synthesize --generator template) into a data root of
    # their own; the benchmark probe files are links to the originals and are used for evaluation only.
    src=${DATA_DIR:-${RULE_DATA_DIR:-../shared/data}}
    syn=$LOG_DIR/synth_data
    export TARGETS=${TARGETS:-"56 57"} EXP=${EXP:-sandbox_synth_${BUDGET}}
    for t in $TARGETS; do
      RULE_DATA_DIR=$src python -m data.synthesize --benchmark rwku --target "$t" --generator template --out "$syn"
    done
    export DATA_DIR=$syn RULE_DATA_DIR=$syn;;
  *) echo "usage: bash scripts/sandbox_table.sh official|synth [pipeline flags]" >&2; exit 2;;
esac
bash run_rwku.sh "$@"
case " $* " in *" --dry-run "*) exit 0;; esac   # a plan only: nothing to report
python -m verl.eval.report "$LOG_DIR/rwku/$EXP" --by_target --out "$LOG_DIR/rwku/$EXP/report"
python scripts/sandbox_goals.py "$LOG_DIR/rwku/$EXP" --out "$LOG_DIR/rwku/$EXP/report/goals.md"
echo "table: $LOG_DIR/rwku/$EXP/report/report.md  goals: $LOG_DIR/rwku/$EXP/report/goals.md"
