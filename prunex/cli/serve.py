"""`prunex serve`: the OpenAI-compatible server (one process, or Ray Serve replicas)."""

from __future__ import annotations

import logging
from typing import Optional

import typer

from prunex.cli.options import KvTokens, Policy


def serve(
    source: Optional[str] = typer.Argument(
        None, help="Exported dir (decoder or LTP encoder; fp32 or int8; pruned or dense), or a DCP checkpoint / "
        "model name exported once into the cache; default: the built-in DCP model."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; loopback unless told otherwise."),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port."),
    api_key: Optional[str] = typer.Option(None, envvar="PRUNEX_API_KEY", help="Require `Authorization: Bearer "
                                          "KEY` on every route but /health (env: PRUNEX_API_KEY)."),
    max_batch: int = typer.Option(16, min=1, help="Requests decoded together (continuous batching)."),
    max_queue: int = typer.Option(64, min=0, help="Requests that may wait for a row; past it the answer is 503 "
                                  "with Retry-After at once."),
    device: str = typer.Option("auto", help="auto (CUDA if onnxruntime-gpu and a GPU), cpu or cuda."),
    threads: int = typer.Option(0, min=0, help="ONNX Runtime intra-op threads (0: as torch)."),
    model_name: Optional[str] = typer.Option(None, help="The `model` clients send (default: the dir's name, or "
                                             "SOURCE as given)."),
    policy: Policy = None,
    kv_tokens: KvTokens = None,
    prefill_chunk: int = typer.Option(256, min=0, help="Prompt tokens prefilled between two decode steps: a long "
                                      "prompt delays running streams by one chunk's time per token (0: each "
                                      "prompt whole, the longest stalls)."),
    max_prompt_chars: Optional[int] = typer.Option(None, min=1, help="Longer prompt text is refused (400) before "
                                                   "tokenizing (default: 16 x the model's context)."),
    replicas: int = typer.Option(0, min=0, help="Ray Serve replicas, each with its own runtime and K/V cache, "
                                 "behind Ray's proxy (needs `pip install \"prunex[ray]\"`); 0: one process, no Ray."),
    max_replicas: Optional[int] = typer.Option(None, min=1, help="--replicas: autoscale from --replicas up to "
                                               "this many."),
    max_ongoing_requests: Optional[int] = typer.Option(None, min=1, help="--replicas: requests Ray sends one "
                                                       "replica at once (default --max-batch + --max-queue)."),
    max_queued_requests: int = typer.Option(-1, min=-1, help="--replicas: requests waiting in Ray's proxy; past it "
                                            "503 (-1: no limit)."),
) -> None:
    """An OpenAI-compatible server (/v1/completions with echo + logprobs, /v1/chat/completions, streaming,
    /v1/models, /health, /metrics, /tokenize, /detokenize, /tokenizer_info; /v1/classify for encoders)."""

    serve_command(source, host=host, port=port, api_key=api_key, max_batch=max_batch, max_queue=max_queue,
                  device=device, threads=threads or None, model_name=model_name, policy=policy, kv_tokens=kv_tokens,
                  prefill_chunk=prefill_chunk, max_prompt_chars=max_prompt_chars, replicas=replicas,
                  max_replicas=max_replicas, max_ongoing_requests=max_ongoing_requests,
                  max_queued_requests=max_queued_requests)


def serve_command(source: str | None, *, host: str, port: int, api_key: str | None, max_batch: int,
                  max_queue: int, device: str, threads: int | None, model_name: str | None,
                  policy: str | None = None, kv_tokens: int | None = None, prefill_chunk: int = 256,
                  max_prompt_chars: int | None = None, replicas: int = 0, max_replicas: int | None = None,
                  max_ongoing_requests: int | None = None, max_queued_requests: int = -1) -> None:
    """Run the server until interrupted; /health says 503 while the model loads. `policy` (window, sinks, h2o,
    tova) with `kv_tokens` caps every request's KV cache on top of the graph's own decisions. `replicas` > 0:
    that many Ray Serve replicas of the same app (`prunex.serve.replicas`)."""
    from prunex.errors import PrunexError
    from prunex.format import is_exported_dir, read_manifest
    from prunex.prune.policy_spec import PolicySpec
    from prunex.runtime.policy_hook import check_runtime_policy
    from prunex.runtime.session import choose_device
    from prunex.serve.app import ServeSettings, run
    from prunex.serve.model import load_served_model

    choose_device(device)  # an unknown --device is refused before the server starts
    if policy is not None and kv_tokens is None:
        raise PrunexError("--policy needs --kv-tokens N for a server (requests have no length known in advance)")
    spec = PolicySpec.from_options(policy, None, kv_tokens, 0)
    if spec is not None and is_exported_dir(source):  # refused before start-up, not in the loading thread
        check_runtime_policy(spec, read_manifest(source))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = ServeSettings(host=host, port=port, api_key=api_key, max_batch=max_batch, max_queue=max_queue,
                             device=device, threads=threads, prefill_chunk=prefill_chunk,
                             max_prompt_chars=max_prompt_chars)
    if replicas:
        from prunex.serve import replicas as ray_replicas

        load = ray_replicas.LoadArgs(source, device, threads, max_batch, model_name, spec, settings)
        ray_replicas.run_local(load, ray_replicas.ReplicaSettings(
            replicas=replicas, max_replicas=max_replicas, max_ongoing_requests=max_ongoing_requests,
            max_queued_requests=max_queued_requests))
        return
    run(lambda: load_served_model(source, device, threads, max_batch, model_name, spec), settings)
