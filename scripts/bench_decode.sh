#!/usr/bin/env bash
# Reproduces the decode figures in the README (built-in DCP default, CPU, 2 threads):
#   1. prunex vs the dense export (same runtime) vs PyTorch generate, batch 1/8/16 x context 512/1024/2048;
#   2. int8 (dynamic) vs fp32, both pruned, at batch 8 / context 2048, five rounds (median ratio);
#   3. optionally the Optimum ORT peer (needs OPTIMUM_PYTHON: a python with optimum-onnx==0.1.0 and
#      transformers==4.57.6, which cannot share prunex's environment).
set -euo pipefail
OUT=${OUT:-runs/bench}
mkdir -p "$OUT"
prunex bench decode --threads 2 --out "$OUT/decode.json"
prunex export --out "$OUT/smollm2-dcp" --force
prunex quantize "$OUT/smollm2-dcp" --out "$OUT/smollm2-dcp-int8" --overwrite
prunex bench decode "$OUT/smollm2-dcp-int8" --baseline "$OUT/smollm2-dcp" --batch 8 --context 2048 --no-torch \
  --threads 2 --repeats 5 --out "$OUT/int8.json"
if [ -n "${OPTIMUM_PYTHON:-}" ]; then
  prunex bench decode --batch 8 --context 2048 --no-torch --optimum-python "$OPTIMUM_PYTHON" --threads 2 \
    --out "$OUT/optimum.json"
fi
