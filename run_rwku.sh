#!/usr/bin/env bash
# The whole RULE pipeline over RWKU targets:
#   [knowledge injection, small models] -> Rejection Steering -> ReBO (+ baselines) -> evaluation -> table + Pareto plot
# Every stage skips what is complete and resumes what is not; logs go to $LOG_DIR/rwku/$EXP/<target>/<stage>/.
#
# Settings (environment variables; `bash run_rwku.sh --help` prints them):
#   MODEL     model path, hub id or the embedded default (smollm2-135m-instruct)
#   TARGETS   RWKU targets, ids or folder names, space separated (default: one target without GPU, 1-10 with GPUs)
#   METHODS   among: rule_grpo rule_ppo rule_rpp rs ga ga_gdr ga_klr npo npo_gdr npo_klr simnpo simnpo_gdr rt
#             (default: rule_grpo; "original" and "rs" rows are always evaluated)
#   BUDGET    smoke (minutes on a CPU) | paper (the paper's hyperparameters) | test (plumbing only); default: smoke without GPU, paper with
#   INJECT    1: knowledge-injection sandbox (default for models under 1B parameters, i.e. the embedded model), 0: paper protocol
#   DATA_DIR  data root with RWKU/Target/ (default: $RULE_DATA_DIR, else ../shared/data or ./data); the sample target always works
#   LOG_DIR   where runs go (default: log)      EXP  experiment name (default: derived from MODEL, BUDGET, INJECT)
#   GPUS      comma list of GPU ids (default: all visible; none on a CPU machine)
#   SUITES    evaluation suites (default: forget,neighbor,mia for smoke; + utility for paper)
#   RS_STEPS, REBO_STEPS  smoke budget only: RS steps (15 on an injected model, else 6) and ReBO steps (4)
set -euo pipefail
cd "$(dirname "$0")"
source examples/exp_target/common.sh
rule_pipeline rwku "$@"
