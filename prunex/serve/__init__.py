"""`prunex serve`: an OpenAI-compatible HTTP server over the runtime (vLLM's entrypoints layout).

- protocol.py: pydantic request/response models in OpenAI's shapes; prunex's own fields marked
- scheduler.py: one thread owns the Generator (continuous batching, bounded wait queue, cancel on disconnect)
- serving.py: requests checked and turned into jobs; results into responses and SSE chunks
- metrics.py: Prometheus metrics (`prunex:` prefix)
- app.py: FastAPI routes, API key, body limit, errors in OpenAI's shape
"""
