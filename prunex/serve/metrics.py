"""Prometheus metrics of `prunex serve`, named with the `prunex:` prefix (as vLLM's `vllm:` and llama.cpp's
`llamacpp:`). prometheus-client 0.26 accepts ':' in metric names and writes them as given in the text format
(`GET /metrics`); a counter named `prunex:prompt_tokens` is exposed as `prunex:prompt_tokens_total`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # no `_created` series next to every counter

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0,
                   40.0, 80.0)


class Metrics:
    """The server's metrics in a registry of their own (so several servers can live in one process)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("prunex:requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=r)
        self.prompt_tokens = Counter("prunex:prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("prunex:generation_tokens", "Tokens generated", registry=r)
        self.time_to_first_token = Histogram("prunex:time_to_first_token_seconds", "From a request's arrival at "
                                             "the scheduler to its first generated token", buckets=LATENCY_BUCKETS,
                                             registry=r)
        self.inter_token_latency = Histogram("prunex:inter_token_latency_seconds", "Between two generated tokens "
                                             "of one request", buckets=LATENCY_BUCKETS, registry=r)
        self.running = Gauge("prunex:num_requests_running", "Requests in the running batch", registry=r)
        self.waiting = Gauge("prunex:num_requests_waiting", "Requests accepted and not running yet (queued or "
                             "being scored)", registry=r)
        self.kv_bytes = Gauge("prunex:kv_cache_bytes", "Bytes of the K/V entries the running rows hold (pruned)",
                              registry=r)
        self.dense_kv_bytes = Gauge("prunex:kv_cache_dense_bytes", "Bytes a dense cache would hold for the same "
                                    "rows and tokens", registry=r)
        self.kv_kept_fraction = Gauge("prunex:kv_cache_kept_fraction", "kv_cache_bytes / kv_cache_dense_bytes "
                                      "(1 when no row runs)", registry=r)
        self.kv_kept_fraction.set(1.0)
