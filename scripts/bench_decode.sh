#!/usr/bin/env bash
# Reproduces the decode figures in docs/benchmarks.md (built-in DCP default, CPU, 2 threads, graph layout 4):
#   1. the grid: prunex int8 vs the dense export int8 (same runtime) vs onnxruntime-genai int8 vs llama.cpp Q8_0,
#      batch 1/8/16 x context 512/1024/2048, one round;
#   2. the bars of issue 13, three rounds each (median ratios): batch 1 x 512 and batch 8 x 2048, int8;
#   3. fp32 at batch 8 x 2048 beside onnxruntime-genai fp32 (and the memory-bandwidth floor), three rounds;
#   4. a training-free policy (h2o, 256 tokens) on the dense int8 export with attention scores vs the same
#      export without a policy;
#   5. the ceiling of the fp32 weights' MatMuls alone at batch 1 and 8 (scripts/matmul_ceiling.py).
# The peers need onnxruntime-genai and llama-cpp-python (the `peers` extra; llama.cpp compiles for ~10 min).
set -euo pipefail
OUT=${OUT:-runs/bench}
mkdir -p "$OUT"
prunex export --out "$OUT/dcp" --force
prunex export --dense --out "$OUT/dense" --force
prunex export --dense --attention-scores --out "$OUT/scored" --force
for name in dcp dense scored; do
  prunex quantize "$OUT/$name" --out "$OUT/$name-int8" --overwrite
done
PEERS=(--peer ortgenai --peer llamacpp)
prunex bench decode "$OUT/dcp-int8" --baseline "$OUT/dense-int8" "${PEERS[@]}" --no-torch \
  --out "$OUT/grid.json" --plot "$OUT/grid.png"
prunex bench decode "$OUT/dcp-int8" --baseline "$OUT/dense-int8" "${PEERS[@]}" --no-torch --repeats 3 \
  --batch 1 --context 512 --out "$OUT/b1x512.json"
prunex bench decode "$OUT/dcp-int8" --baseline "$OUT/dense-int8" "${PEERS[@]}" --no-torch --repeats 3 \
  --batch 8 --context 2048 --out "$OUT/b8x2048.json"
prunex bench decode "$OUT/dcp" --baseline "$OUT/dense" --peer ortgenai --no-torch --repeats 3 \
  --batch 8 --context 2048 --out "$OUT/fp32.json"
prunex bench decode "$OUT/scored-int8" --baseline "$OUT/dense-int8" --policy h2o --kv-tokens 256 --no-torch \
  --batch 8 --context 2048 --out "$OUT/h2o.json"
python "$(dirname "$0")/matmul_ceiling.py" "$OUT/dcp" --batch 1 --batch 8
