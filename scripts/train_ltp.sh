#!/usr/bin/env bash
# Trains the LTP (Learned Token Pruning) checkpoints of the packaged MiniLM (all-MiniLM-L6-v2) on Rotten
# Tomatoes reviews and on the BBC news topics with the DEFAULT settings and --target-flops 0.5, stage by stage
# (the same code path as `--stage all`, but each stage's checkpoint stays for inspection), then evaluates them:
# each on its test split, the Rotten Tomatoes model also on a file of drug reviews from another source, and the
# hard stage once more without distillation (--distill 0) to measure what distillation brings.
#
# Defaults (see prunex/train/ltp_trainer.py): batch 32 (inputs up to 128 tokens) or 8; base stage up to 2
# epochs, validation checked every quarter epoch, stopping after two checks in a row without a gain (best kept);
# soft and hard stages a quarter epoch each (at least 30 steps); encoder lr 1e-4, thresholds 1e-2; lambda
# steered towards the target, thresholds then calibrated on validation; floor of 4 tokens; distillation 0.5.
#
# Cost on a 2-core CPU with THREADS=2 (MiniLM, fp32): bbc ~4 s a step of 8 in the base stage (fused attention),
# ~10 s soft, ~6 s hard; the bbc part ~17 minutes. Measured wall times are in docs/encoders.md. An interrupted stage
# goes on where it stopped: rerun with --resume in place of --force.
# BBC, Rotten Tomatoes and the UCI drug reviews are research-use datasets.
set -euo pipefail
OUT=${OUT:-runs/ltp}
THREADS=${THREADS:-1}
TARGET=${TARGET:-0.5}
mkdir -p "$OUT"
common=(ltp --threads "$THREADS" --force)

for task in rotten-tomatoes bbc; do
  prunex train "${common[@]}" --task "$task" --stage base --out "$OUT/$task-base"
  prunex train "${common[@]}" --task "$task" --stage soft --target-flops "$TARGET" \
    --model "$OUT/$task-base" --out "$OUT/$task-soft"
  prunex train "${common[@]}" --task "$task" --stage hard --target-flops "$TARGET" \
    --model "$OUT/$task-soft" --out "$OUT/$task"
  prunex eval accuracy "$OUT/$task" --task "$task" --json | tee "$OUT/$task-test.json"
done

# Without distillation, from the same soft stage.
prunex train "${common[@]}" --task rotten-tomatoes --stage hard --target-flops "$TARGET" --distill 0 \
  --model "$OUT/rotten-tomatoes-soft" --out "$OUT/rotten-tomatoes-nodistill"
prunex eval accuracy "$OUT/rotten-tomatoes-nodistill" --task rotten-tomatoes --json \
  | tee "$OUT/rotten-tomatoes-nodistill-test.json"

# A user's file of short reviews from another source, scored whole (negative/positive = ids 0/1, as rotten/fresh).
python scripts/drug_reviews_file.py "$OUT/drug-reviews.jsonl"
prunex eval accuracy "$OUT/rotten-tomatoes" --task "$OUT/drug-reviews.jsonl" --json | tee "$OUT/drug-reviews.json"

# Speed where users run it: the LTP export vs the dense export in ONNX Runtime, fp32 and int8, batch 1 and 16.
prunex bench classify "$OUT/bbc" --batch 1 --batch 16 --threads 1 --repeats 3 --limit 64 \
  --out "$OUT/bench-classify-bbc.json"
