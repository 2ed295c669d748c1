#!/bin/bash
# One GPU check of ReBO's training path (scripts/gpu_check.py says what it checks), under 10 minutes on one H100 /
# H200, with torch, transformers, accelerate and peft only: no vLLM, no Ray, no network. On the lent GPU machine,
# after ../shared/tools/device_bundle.sh's two set-up calls (the embedded model at /tmp/smollm2.gguf, the missing
# packages in /tmp/site):   bash scripts/gpu_check.sh          (writes $OUT/gpu_check.json when OUT is set)
# Arguments go to the python part, e.g. the CPU run of the tests: bash scripts/gpu_check.sh --device cpu --quick
set -euo pipefail
cd "$(dirname "$0")/.."
site=""
[[ -d /tmp/site ]] && site="/tmp/site:"
export PYTHONPATH="${site}${PWD}${PYTHONPATH:+:$PYTHONPATH}"
export RULE_CACHE_DIR="${RULE_CACHE_DIR:-/tmp/rule_cache}"   # the embedded model's HF folder is built here
export TOKENIZERS_PARALLELISM=false
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
exec python3 scripts/gpu_check.py "$@"
