#!/usr/bin/env bash
# The whole RULE pipeline on MUSE-Books (the Harry Potter books):
#   ReBO data (data.synthesize) -> Rejection Steering -> ReBO -> evaluation -> table
# Every stage skips what is complete and resumes what is not; logs go to $LOG_DIR/muse/$EXP/books/<stage>/.
#
# Settings (environment variables; `bash run_muse.sh --help` prints them):
#   MODEL     model path, hub id or the embedded default (smollm2-135m-instruct)
#   (MUSE has one target, "books"; baselines are RWKU-only in this runner)
#   METHODS   among: rule_grpo rule_ppo rule_rpp rs ga ga_gdr ga_klr npo npo_gdr npo_klr simnpo simnpo_gdr rt
#             (default: rule_grpo; "original" and "rs" rows are always evaluated)
#   BUDGET    smoke (minutes on a CPU) | paper (the paper's hyperparameters) | test (plumbing only); default: smoke without GPU, paper with
#   INJECT    1: knowledge-injection sandbox (default for models under 1B parameters, i.e. the embedded model), 0: paper protocol
#   DATA_DIR  data root with RWKU/Target/ (default: $RULE_DATA_DIR, else ../shared/data or ./data); the sample target always works
#   LOG_DIR   where runs go (default: log)      EXP  experiment name (default: derived from MODEL, BUDGET, INJECT)
#   GPUS      comma list of GPU ids (default: all visible; none on a CPU machine)
#   SUITES    unused (MUSE runs verbmem, knowmem, privleak); MUSE_LIMIT  records per MUSE file in smoke (20)
set -euo pipefail
cd "$(dirname "$0")"
source examples/exp_target/common.sh
rule_muse "$@"
