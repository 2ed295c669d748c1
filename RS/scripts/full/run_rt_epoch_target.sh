#!/usr/bin/env bash
# Rejection Steering (stage 1) for a list of RWKU targets, one output folder per target, skipping finished ones
# (a target is finished when <OUT_ROOT>/<target>/DONE exists). Run from the repository root; no absolute paths.
#
#   TARGETS="1_Stephen_King 2_Confucius" bash RS/scripts/full/run_rt_epoch_target.sh
#   MODEL=meta-llama/Meta-Llama-3-8B-Instruct CONFIG=RS/configs/rs_llama3_8b.yaml \
#     LAUNCH="accelerate launch --config_file RS/configs/accelerate_fsdp.yaml" bash RS/scripts/full/run_rt_epoch_target.sh
#
# Environment (all optional): MODEL (default: the embedded smollm2-135m-instruct), TARGETS (space/comma list of ids,
# folders or names; default "1_Stephen_King"), DATA_DIR (default $RULE_DATA_DIR or ./data), OUT_ROOT
# (default log/rs/<model basename>), CONFIG (default RS/configs/rs_smollm2.yaml), LR, EPOCHS, BATCH, GRAD_ACC,
# CUTOFF, SEED, FINETUNING_TYPE (full|lora), LAUNCH (default "python"; e.g. "accelerate launch --config_file ..."),
# EXTRA (further RS.train flags). Extra command-line arguments are passed to RS.train as well.
set -euo pipefail

MODEL="${MODEL:-smollm2-135m-instruct}"
TARGETS="${TARGETS:-1_Stephen_King}"
CONFIG="${CONFIG:-RS/configs/rs_smollm2.yaml}"
OUT_ROOT="${OUT_ROOT:-log/rs/$(basename "$MODEL")}"
LAUNCH="${LAUNCH:-python}"

if [ ! -f RS/train.py ]; then
  echo "run from the repository root (RS/train.py not found in $(pwd))" >&2
  exit 1
fi

flags=(--config "$CONFIG" --model_name_or_path "$MODEL" --stage rt --dataset reject_target)
[ -n "${DATA_DIR:-}" ] && flags+=(--data_dir "$DATA_DIR")
[ -n "${LR:-}" ] && flags+=(--learning_rate "$LR")
[ -n "${EPOCHS:-}" ] && flags+=(--num_train_epochs "$EPOCHS")
[ -n "${BATCH:-}" ] && flags+=(--per_device_train_batch_size "$BATCH")
[ -n "${GRAD_ACC:-}" ] && flags+=(--gradient_accumulation_steps "$GRAD_ACC")
[ -n "${CUTOFF:-}" ] && flags+=(--cutoff_len "$CUTOFF")
[ -n "${SEED:-}" ] && flags+=(--seed "$SEED")
[ -n "${FINETUNING_TYPE:-}" ] && flags+=(--finetuning_type "$FINETUNING_TYPE")
# shellcheck disable=SC2206
[ -n "${EXTRA:-}" ] && flags+=($EXTRA)

for target in ${TARGETS//,/ }; do
  out="$OUT_ROOT/$target"
  if [ -f "$out/DONE" ]; then
    echo "[skip] $target: $out/DONE exists"
    continue
  fi
  mkdir -p "$out"
  echo "[run] $target -> $out"
  # shellcheck disable=SC2086
  $LAUNCH -m RS.train "${flags[@]}" --target "$target" --output_dir "$out" --overwrite_output_dir "$@" \
    2>&1 | tee "$out/train.out"
done
