#!/usr/bin/env bash
# Trains DCP heads for SmolLM2 on one GPU: several sparsity weights side by side at context 1024 (the context the
# quality bar is measured at), then measures each checkpoint on the held-out validation and test windows
# (16 x 1024). On one H100, three runs of 600 steps x 4 x 1024 tokens side by side took 516 s (~37 GB of GPU
# memory each at batch 8, which does not fit three times).
# Used for the shipped default (docs/decoders.md: "The built-in default"); on the CPU, use scripts/train_dcp_default.sh.
set -euo pipefail
RUN_DIR=${RUN_DIR:-runs/dcp-gpu}
STEPS=${STEPS:-600}
WEIGHTS=${WEIGHTS:-"0.1 0.2 0.3"}
MODEL=${MODEL:-smollm2}
DEVICE=${DEVICE:-cuda}
CONTEXT=${CONTEXT:-1024}
BATCH=${BATCH:-4}
common=(dcp --model "$MODEL" --text wikipedia --context "$CONTEXT" --batch-size "$BATCH" --lr 1e-2
        --sinks 4 --recent 64 --init-bias 5 --loss distill --device "$DEVICE" --force)
mkdir -p "$RUN_DIR"
python3 -c "from prunex.models.sources import load_model; m = load_model('$MODEL'); print('base weights', m.weights_hash)"

for weight in $WEIGHTS; do
  prunex train "${common[@]}" --steps "$STEPS" --sparsity-weight "$weight" --out "$RUN_DIR/sw$weight" \
    >"$RUN_DIR/sw$weight.log" 2>&1 &
done
wait
for weight in $WEIGHTS; do
  for split in validation test; do
    prunex eval ppl "$RUN_DIR/sw$weight" --device "$DEVICE" --split "$split" --context "$CONTEXT" --windows 16 \
      --json >"$RUN_DIR/sw$weight.$split.json" &
  done
done
wait
cat "$RUN_DIR"/*.json
