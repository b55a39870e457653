#!/usr/bin/env bash
# An environment of its own for the OpenVINO GenAI peer of `prunex bench decode --openvino-python PY`:
# openvino-genai (the engine) and optimum-intel (its converter), which needs transformers < 5.6 (prunex runs 5.x
# newer). optimum-intel pulls a CUDA torchvision that breaks the conversion beside the CPU torch: it goes.
# Usage: scripts/openvino_env.sh [DIR]   (default $PRUNEX_CACHE/envs/openvino); prints the env's python.
set -euo pipefail
DIR=${1:-${PRUNEX_CACHE:-$HOME/.cache/prunex}/envs/openvino}
python3 -m venv "$DIR"
"$DIR/bin/pip" install -q --upgrade pip
"$DIR/bin/pip" install -q torch==2.13.0
# torch stays the CPU build: without the pin, optimum-intel's torchvision pulls a CUDA torch (several GB)
echo "torch==2.13.0" > "$DIR/constraints.txt"
"$DIR/bin/pip" install -q -c "$DIR/constraints.txt" openvino-genai==2026.4.1.0 optimum-intel==2.2.0 nncf==3.4.0 \
  "transformers>=5.5,<5.6"
"$DIR/bin/pip" uninstall -q -y torchvision || true
echo "$DIR/bin/python"
