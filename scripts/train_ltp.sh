#!/usr/bin/env bash
# Trains the real LTP (Learned Token Pruning) checkpoints of the packaged MiniLM (all-MiniLM-L6-v2) on the
# BBC news topics and on Rotten Tomatoes reviews, stage by stage, and evaluates them on their test splits.
#
# Cost on this 2-core CPU, measured at 1 torch thread (MiniLM, fp32, forward + backward + AdamW):
#   bbc, batch 8 x up to 512 tokens (mean 406): ~12 s a step dense/base, ~11 s soft, ~5 s hard;
#     evaluation ~0.34 s an article dense, ~0.25 s pruned.
#     40 + 30 + 30 steps + 3 validation passes (222 articles) + the test evaluation: ~21 minutes.
#   rotten-tomatoes, batch 32 x up to 128 tokens (mean 27): ~1.8 s a step base, ~1.5 s soft, ~0.8 s hard;
#     100 + 60 + 60 steps + evaluations: ~7 minutes.
# Two threads (THREADS=2, with nothing else running) should take roughly 0.6x that.
#
# --lr is the thresholds' learning rate (offsets in units of the final threshold); the encoder's is 2e-4.
# BBC and Rotten Tomatoes are research-use datasets.
set -euo pipefail
OUT=${OUT:-runs/ltp}
THREADS=${THREADS:-0}  # 0: torch's default (all cores)
mkdir -p "$OUT"
common=(--method ltp --threads "$THREADS" --lr 1e-2 --lambda 0.1 --force)

# BBC: 5 topics, long articles (max 512 tokens), where token pruning pays most.
prunex train "${common[@]}" --task bbc --context 512 --batch-size 8 --stage base --steps 40 \
  --model minilm --out "$OUT/bbc-base"
prunex train "${common[@]}" --task bbc --context 512 --batch-size 8 --stage soft --steps 30 \
  --model "$OUT/bbc-base" --out "$OUT/bbc-soft"
prunex train "${common[@]}" --task bbc --context 512 --batch-size 8 --stage hard --steps 30 \
  --model "$OUT/bbc-soft" --out "$OUT/bbc"
prunex eval accuracy "$OUT/bbc" --task bbc --split test --json | tee "$OUT/bbc-test.json"

# Rotten Tomatoes: fresh/rotten review snippets (max 128 tokens).
prunex train "${common[@]}" --task rotten-tomatoes --context 128 --batch-size 32 --stage base --steps 100 \
  --model minilm --out "$OUT/rt-base"
prunex train "${common[@]}" --task rotten-tomatoes --context 128 --batch-size 32 --stage soft --steps 60 \
  --model "$OUT/rt-base" --out "$OUT/rt-soft"
prunex train "${common[@]}" --task rotten-tomatoes --context 128 --batch-size 32 --stage hard --steps 60 \
  --model "$OUT/rt-soft" --out "$OUT/rotten-tomatoes"
prunex eval accuracy "$OUT/rotten-tomatoes" --task rotten-tomatoes --split test --json \
  | tee "$OUT/rotten-tomatoes-test.json"
