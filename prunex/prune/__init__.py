"""The pruning methods as torch modules, and the one layer loop per model family that runs them.

- policy.py: `KeepPolicy`, what a decoder KV-keep policy provides (pair scores) and the cumulative decisions
  prunex builds from them; dcp.py (learned, DCP) and window.py (sinks + recent window) implement it.
- attention_policy.py: `AttentionPolicy`, training-free policies that evict by attention probabilities (H2O,
  TOVA), decided in `run_decoder` after the layer's queries and keys; training_free.py: the policies by name;
  budget.py: a KV budget as tokens or a kept fraction, and `BudgetedPolicy` (a learned policy held to it).
- decoder.py: `run_decoder`, the decoder layer loop over an optional read-only past (training, evaluation,
  step-wise generation and export all run it); forward.py: whole sequences with the pruning counted;
  kv_cache.py: a PyTorch cache that physically loses dropped tokens; lm.py: `PrunedLM` (forward, generate).
- ltp.py: LTP thresholds and `LTPClassifier`; encoder_forward.py: `run_encoder`, the encoder layer loop with
  soft masks (training) or physical token removal (inference, export).
- alpha_sigmoid.py: DCP's alpha-sigmoid keep probability.
"""
