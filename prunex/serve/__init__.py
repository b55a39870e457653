"""`prunex serve`: an OpenAI-compatible HTTP server over the runtime (vLLM's entrypoints layout).

- protocol.py: pydantic request/response models in OpenAI's shapes; prunex's own fields marked
- model.py: the served model (a decoder runtime or an encoder classifier) and how it is loaded
- scheduler.py: one thread owns the Generator (continuous batching, chunked prefill, bounded wait queue, cancel
  on disconnect)
- base.py: the checks every request passes, the tokenizer threads, jobs in and items out; one module per
  endpoint over it (completions.py, chat.py, tokenizer_routes.py, classify.py), put together in serving.py
- metrics.py: Prometheus metrics (`prunex:` prefix)
- app.py: FastAPI routes, API key, body limit and timeout, errors in OpenAI's shape
- replicas.py: the same app as a Ray Serve deployment (`--replicas N`)
"""
