#!/usr/bin/env bash
# Reproduces the built-in DCP default (prunex/defaults/smollm2-dcp) and the sparsity/perplexity curve in the
# README. CPU: 150 steps of 512 tokens take ~1 s of compute per 100 tokens at 1 thread (~15-20 min per run
# when the three runs share 2 cores). Then each checkpoint and the sinks + window baselines are measured on
# the same held-out Wikipedia windows (context 1024).
set -euo pipefail
OUT=${OUT:-runs/dcp}
common=(--method dcp --model smollm2 --text wikipedia --steps 150 --context 512 --lr 1e-2
        --sinks 4 --recent 64 --init-bias 5 --loss distill --threads 1 --force)
for weight in 0.15 0.3 0.6; do
  prunex train "${common[@]}" --sparsity-weight "$weight" --out "$OUT/sw$weight" &
done
wait
for weight in 0.15 0.3 0.6; do
  prunex eval ppl "$OUT/sw$weight" --context 1024 --windows 16 --json | tee "$OUT/sw$weight.json"
done
for window in 64 128 256 512; do
  prunex eval ppl smollm2 --window "$window" --sinks 4 --context 1024 --windows 16 --json | tee "$OUT/window$window.json"
done
