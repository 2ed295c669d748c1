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
  case "$BUDGET" in smoke|paper|test) ;; *) die "BUDGET must be smoke, paper or test, got '$BUDGET'";; esac
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

# ---- budgets ----------------------------------------------------------------------------------------------------
# smoke: minutes on a 2-core CPU (embedded model); paper: DESIGN.md §5-6 hyperparameters (8B models, GPUs);
# test: smoke cut to one or two steps of everything and two probes per file (the test suite's plumbing check).
rule_budget() {
  BASELINE_ARGS=()
  local rebo_batch=8
  if [ "$BUDGET" = test ]; then RS_STEPS=${RS_STEPS:-2}; REBO_STEPS=${REBO_STEPS:-1}; rebo_batch=2; fi
  if [ "$BUDGET" != paper ]; then
    # RS_STEPS: enough to steer without leaving ReBO only refusals (README.md, "ReBO learns on a CPU"). The base
    # model: 6 steps give ~40% sampled refusals, 15 refuse every neighbor question. An injected model holds on to
    # its answers: 6 steps give no refusal at all, 15 about half.
    RS_ARGS=(--config RS/configs/rs_smollm2.yaml --max_steps "${RS_STEPS:-$([ "$INJECT" = 1 ] && echo 15 || echo 6)}"
             --warmup_steps 1)
    INJECT_ARGS=(--config RS/configs/inject_smollm2.yaml --eval_probes false)  # the evaluator scores it
    REBO_ARGS=(trainer.total_steps="${REBO_STEPS:-4}" data.rollout_batch_size=$rebo_batch
               worker.actor.global_batch_size=$rebo_batch
               trainer.val_freq=0 trainer.val_before_train=false
               trainer.val_at_end=false trainer.save_freq=2 data.val_files=null)
    BASELINE_CFG=smollm2
    SUITES=${SUITES:-forget,neighbor,mia}
    EVAL_ARGS=(--batch_size 16)
  else
    RS_ARGS=(--config RS/configs/rs_llama3_8b.yaml)
    INJECT_ARGS=(--config RS/configs/inject_smollm2.yaml --inject_probe_limit 0 --inject_passages true)
    REBO_ARGS=()
    BASELINE_CFG=llama3_8b
    SUITES=${SUITES:-forget,neighbor,mia,utility}
    EVAL_ARGS=(--batch_size 32)
  fi
  if [ "$BUDGET" = test ]; then
    INJECT_ARGS+=(--max_steps 2); BASELINE_ARGS=(--max_steps 2)
    REBO_ARGS+=(worker.rollout.n=2 data.max_response_length=8)
    EVAL_ARGS+=(--limit 2)
  fi
}

rebo_config() {  # method -> example config
  case "$1" in
    rule_grpo) [ "$BUDGET" = paper ] && echo examples/grpo_rj_rl.yaml || echo examples/grpo_rj_rl_cpu.yaml;;
    rule_ppo) echo examples/ppo_rj_rl.yaml;;
    rule_rpp) echo examples/rpp_rj_rl.yaml;;
  esac
}

# The actor of the newest complete ReBO checkpoint under a run dir.
rebo_actor() { ls -d "$1"/checkpoints/global_step_*/actor 2>/dev/null | sort -V | tail -n 1; }

# ---- one target ---------------------------------------------------------------------------------------------------
rule_target() {
  local target=$1 folder tdir original rs_model
  folder=$(python -c "from data.rwku import resolve_target; print(resolve_target('$target').folder)") \
    || die "unknown target $target"
  tdir=$LOG_DIR/rwku/$EXP/$folder
  mkdir -p "$tdir/results"
  log "== target $folder ($PROTOCOL protocol, $BUDGET budget) -> $tdir"

  original=$MODEL
  if [ "$INJECT" = 1 ]; then
    run_step "inject $folder" "$tdir/inject" python -m RS.train --stage inject "${INJECT_ARGS[@]}" \
      --model_name_or_path "$MODEL" --target "$folder" --output_dir "$tdir/inject" --overwrite_output_dir
    original=$tdir/inject
  fi
  run_step "RS $folder" "$tdir/rs" python -m RS.train --stage rt --dataset reject_target "${RS_ARGS[@]}" \
    --model_name_or_path "$original" --target "$folder" --output_dir "$tdir/rs" --overwrite_output_dir
  rs_model=$tdir/rs
  # the paper starts ReBO from the epoch-2 RS checkpoint
  [ -d "$tdir/rs/checkpoint-epoch-2" ] && rs_model=$tdir/rs/checkpoint-epoch-2

  declare -A models=([original]=$original [rs]=$rs_model)
  [ "$INJECT" = 1 ] && models[base]=$MODEL  # the sandbox also scores the model before injection
  local method
  for method in $METHODS; do
    case "$method" in
      rs|original|base) ;;
      rule_grpo|rule_ppo|rule_rpp)
        # ablations (DESIGN.md §6-7): start from the original model, KL to the original, no boundary prompts
        local start=$rs_model ref=$rs_model train="rwku:$folder:rl_rejection_with_fb_neighbor_target"
        [ "${REBO_START:-rs}" = original ] && start=$original
        [ "${REBO_REF:-start}" = original ] && ref=$original || ref=$start
        if [ "${REBO_DATA:-full}" = reject_only ]; then
          train=$tdir/$method.reject_only.json
          python - "$folder" "$train" <<'PY'
import json, sys
from data.rwku import resolve_target
rows = [r for r in resolve_target(sys.argv[1]).load("rl_rejection_with_fb_neighbor_target") if r["solution"][0] == "<reject>"]
json.dump(rows, open(sys.argv[2], "w"))
PY
        fi
        # the trainer itself resumes a killed run from its latest complete checkpoint
        run_step "ReBO $method $folder" "$tdir/$method" python -m verl.trainer.main config="$(rebo_config "$method")" \
          data.train_files="$train" worker.actor.model_path="$start" worker.ref.model_path="$ref" \
          trainer.save_dir="$tdir/$method" trainer.experiment_name="${method}_$folder" "${REBO_ARGS[@]}"
        models[$method]=$(rebo_actor "$tdir/$method")
        [ -n "${models[$method]}" ] || die "ReBO $method finished without a checkpoint in $tdir/$method";;
      ga|ga_gdr|ga_klr|npo|npo_gdr|npo_klr|simnpo|simnpo_gdr|rt|idkdpo)
        local stage=$method extra=()
        [ "$method" = rt ] && { stage=rt; extra=(--dataset rwku_rt); }
        local cfg=RS/configs/${method}_$BASELINE_CFG.yaml
        [ "$method" = rt ] && cfg=RS/configs/rwku_rt_$BASELINE_CFG.yaml
        [ -f "$cfg" ] || cfg=RS/configs/${method}_smollm2.yaml
        run_step "$method $folder" "$tdir/$method" python -m RS.train --stage "$stage" --config "$cfg" "${extra[@]}" \
          --model_name_or_path "$original" --target "$folder" --output_dir "$tdir/$method" --overwrite_output_dir \
          "${BASELINE_ARGS[@]}"
        models[$method]=$tdir/$method;;
      *) die "unknown method '$method' (see --help)";;
    esac
  done

  local name label
  for name in base original rs $METHODS; do
    [ -n "${models[$name]:-}" ] || continue
    [ -f "$tdir/results/$name.json" ] && { log "skip eval $name (done)"; continue; }
    case "$name" in base) label="Base (before injection)";; original) label=Original;; rs) label=RS;; rule_grpo) label="RULE (GRPO)";;
      rule_ppo) label="RULE (PPO)";; rule_rpp) label="RULE (Reinforce++)";; *) label=$(echo "$name" | tr a-z A-Z);; esac
    local t0=$SECONDS
    log "eval $label ($name)"
    python -m verl.eval --benchmark rwku --model_path "${models[$name]}" --target "$folder" --method "$label" \
      --protocol "$PROTOCOL" --suites "$SUITES" --output "$tdir/results/$name.json" "${EVAL_ARGS[@]}" \
      > "$tdir/results/$name.log" 2>&1 || die "evaluation of $name failed (see $tdir/results/$name.log)"
    echo "eval_$name $((SECONDS - t0))" >> "$STAGE_TIMES"
  done
}

# ---- the whole pipeline -----------------------------------------------------------------------------------------
rule_pipeline() {
  local bench=$1; shift
  case "${1:-}" in -h|--help) usage; return 0;; esac
  rule_settings
  rule_budget
  if [ -z "${TARGETS:-}" ]; then
    if [ "$ON_GPU" = 1 ]; then TARGETS="1 2 3 4 5 6 7 8 9 10"
    elif [ -d "$DATA_DIR/RWKU/Target" ]; then TARGETS=1_Stephen_King
    else TARGETS=101_Elowen_Marsh; fi
  fi
  mkdir -p "$LOG_DIR/$bench/$EXP"
  STAGE_TIMES=$LOG_DIR/$bench/$EXP/stage_times.txt
  log "RULE $bench: MODEL=$MODEL TARGETS='$TARGETS' METHODS='$METHODS' BUDGET=$BUDGET INJECT=$INJECT DATA_DIR=$DATA_DIR"
  local t0=$SECONDS target
  for target in $TARGETS; do rule_target "$target"; done
  python -m verl.eval.report "$LOG_DIR/$bench/$EXP" --out "$LOG_DIR/$bench/$EXP/report"
  log "pipeline finished in $((SECONDS - t0)) s; table: $LOG_DIR/$bench/$EXP/report/report.md"
}

# ---- MUSE-Books ---------------------------------------------------------------------------------------------------
# MUSE ships no ReBO file: it is built from reject_with_neighbor_target.json by data.synthesize (label-independent
# prompts, DESIGN.md §11). The original model is MODEL itself (the paper uses muse-bench/MUSE-Books_target).
rule_muse() {
  case "${1:-}" in -h|--help) usage; return 0;; esac
  rule_settings
  rule_budget
  INJECT=0; PROTOCOL=paper
  EXP=${EXP_MUSE:-$(basename "$MODEL")_${BUDGET}}
  local tdir=$LOG_DIR/muse/$EXP/books rs_model t0=$SECONDS method
  mkdir -p "$tdir/results"
  STAGE_TIMES=$LOG_DIR/muse/$EXP/stage_times.txt
  local eval_args=("${EVAL_ARGS[@]}") muse_args=()
  [ "$BUDGET" = smoke ] && eval_args+=(--limit "${MUSE_LIMIT:-20}")
  [ "$BUDGET" != paper ] && muse_args=(worker.reward.reward_fn=forget_two_stage_abs data.max_prompt_length=640)
  log "RULE muse: MODEL=$MODEL METHODS='$METHODS' BUDGET=$BUDGET DATA_DIR=$DATA_DIR -> $tdir"
  run_step "MUSE ReBO data" "$tdir/data" python -m data.synthesize --benchmark muse --data_dir "$DATA_DIR" \
    --out "$tdir/data/MUSE/books"
  run_step "RS books" "$tdir/rs" python -m RS.train --stage rt --dataset muse_reject "${RS_ARGS[@]}" \
    --model_name_or_path "$MODEL" --output_dir "$tdir/rs" --overwrite_output_dir
  rs_model=$tdir/rs
  [ -d "$tdir/rs/checkpoint-epoch-2" ] && rs_model=$tdir/rs/checkpoint-epoch-2
  declare -A models=([original]=$MODEL [rs]=$rs_model)
  for method in $METHODS; do
    case "$method" in
      rule_grpo|rule_ppo|rule_rpp)
        local cfg; cfg=$(rebo_config "$method"); [ "$method$BUDGET" = rule_grpopaper ] && cfg=examples/grpo_rj_rl_muse.yaml
        run_step "ReBO $method books" "$tdir/$method" python -m verl.trainer.main config="$cfg" \
          data.train_files="$tdir/data/MUSE/books/rl_rejection_with_neighbor.json" \
          worker.actor.model_path="$rs_model" trainer.save_dir="$tdir/$method" trainer.experiment_name="${method}_books" \
          worker.reward.reward_fn=forget_two_stage_abs "${REBO_ARGS[@]}" "${muse_args[@]}"
        models[$method]=$(rebo_actor "$tdir/$method");;
      rs|original) ;;
      *) log "method $method is RWKU-only here; skipped for MUSE";;
    esac
  done
  local name
  for name in original rs $METHODS; do
    [ -n "${models[$name]:-}" ] || continue
    [ -f "$tdir/results/$name.json" ] && { log "skip eval $name (done)"; continue; }
    log "eval $name"
    python -m verl.eval --benchmark muse --model_path "${models[$name]}" --method "$name" \
      --output "$tdir/results/$name.json" "${eval_args[@]}" > "$tdir/results/$name.log" 2>&1 \
      || die "evaluation of $name failed (see $tdir/results/$name.log)"
  done
  python -m verl.eval.report "$LOG_DIR/muse/$EXP" --out "$LOG_DIR/muse/$EXP/report"
  log "pipeline finished in $((SECONDS - t0)) s; table: $LOG_DIR/muse/$EXP/report/report.md"
}
