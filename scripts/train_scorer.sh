#!/usr/bin/env bash
# The learned K/V scorer of SmolLM2-135M (per-K/V-head decisions, `prunex train scorer`), then its comparison
# with every training-free policy on BBC news, a source it never saw, at context 2048 (and 4096 with CONTEXTS).
#
# Fitting reads the train splits of Wikipedia, the 2012 convention speeches and the 2016 debates (48 windows x
# 2048 tokens, forward passes only), then chooses the rule (ranked at 3 recent shares, attention at 3 prior
# weights) on their validation splits by the mean ratio at --target-kv 0.125 and 0.25. Cost on the 2-core Xeon
# with THREADS=2: fitting 529 s (186 tokens/s), the choice ~18 min (12 evaluations of ~90 s, measured apart);
# the comparison at 2048 (8 windows; H2O and TOVA loop over positions) ~40 min. An interrupted fit goes on with
# --resume in place of --force.
set -euo pipefail
OUT=${OUT:-runs/scorer}
THREADS=${THREADS:-2}
CONTEXTS=${CONTEXTS:-2048}
prunex train scorer --out "$OUT" --threads "$THREADS" --force
for context in $CONTEXTS; do
  prunex eval compare "$OUT" --text bbc --context "$context" --windows 8 --budgets 0.125,0.25,0.5 \
    --plot "$OUT/compare-bbc-$context.png" --json > "$OUT/compare-bbc-$context.json"
done
