#!/usr/bin/env bash
# Shared pipeline steps for run_rwku.sh, run_muse.sh and the per-experiment runners (sourced, not run).
# Each step writes into its own folder and a `.done` marker last, so a rerun skips finished steps and a killed step
# restarts (ReBO resumes from its latest complete checkpoint; the others restart from scratch).

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
done_marker() { [ -f "$1/.done" ]; }
mark_done() { date -u +%FT%TZ > "$1/.done"; }

# run_step NAME DIR CMD...: skip when DIR/.done exists, else run CMD (stdout+stderr teed to DIR/run.log) and mark done.
run_step() {
  local name=$1 dir=$2; shift 2
  if done_marker "$dir"; then log "skip $name (done: $dir)"; return 0; fi
  mkdir -p "$dir"
  log "run  $name -> $dir"
  local t0=$SECONDS
  "$@" 2>&1 | tee -a "$dir/run.log" >&2 || die "$name failed (see $dir/run.log)"
  mark_done "$dir"
  log "done $name in $((SECONDS - t0)) s"
  echo "$name $((SECONDS - t0))" >> "$STAGE_TIMES"
}

has_gpu() { python - <<'PY' 2>/dev/null
import torch, sys
sys.exit(0 if torch.cuda.is_available() else 1)
PY
}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

# ---- settings ---------------------------------------------------------------------------------------------------
rule_settings() {
  MODEL=${MODEL:-smollm2-135m-instruct}
  if has_gpu; then ON_GPU=1; else ON_GPU=0; fi
  BUDGET=${BUDGET:-$([ "$ON_GPU" = 1 ] && echo paper || echo smoke)}
  case "$BUDGET" in smoke|paper) ;; *) die "BUDGET must be smoke or paper, got '$BUDGET'";; esac
  if [ -z "${INJECT:-}" ]; then
    case "$MODEL" in smollm2*|*SmolLM2*|*135M*|*360M*) INJECT=1;; *) INJECT=0;; esac
  fi
  if [ -z "${DATA_DIR:-}" ]; then
    if [ -n "${RULE_DATA_DIR:-}" ]; then DATA_DIR=$RULE_DATA_DIR
    elif [ -d ../shared/data/RWKU ]; then DATA_DIR=$(cd ../shared/data && pwd)
    else DATA_DIR=data; fi
  fi
  export RULE_DATA_DIR=$DATA_DIR
  LOG_DIR=${LOG_DIR:-log}
  METHODS=${METHODS:-rule_grpo}
  GPUS=${GPUS:-}
  [ -n "$GPUS" ] && export CUDA_VISIBLE_DEVICES=$GPUS
  local model_tag; model_tag=$(basename "$MODEL")
  EXP=${EXP:-${model_tag}_${BUDGET}$([ "$INJECT" = 1 ] && echo _sandbox)}
  PROTOCOL=$([ "$INJECT" = 1 ] && echo sandbox || echo paper)
}
