"""Runtimes for exported prunex models on ONNX Runtime (CPU or CUDA).

- session.py: providers, threads, IOBinding of torch tensors
- kv_cache.py: the KV-cache manager (slot buffers, validity masks, amortized compaction, accounting)
- engine.py: one decoder graph + its cache: prefill rows, decode the batch
- sampling.py, text_stream.py: token choice, incremental text and stop strings
- generator.py: continuous batching with the caller owning the loop
- runtime.py: `Runtime`, the entry point for apps
- classifier.py: exported encoder classifiers, batched by length
"""
