"""The function behind `prunex serve`: settings from the options, the model loaded after start-up."""

from __future__ import annotations

import logging


def serve_command(source: str | None, *, host: str, port: int, api_key: str | None, max_batch: int,
                  max_queue: int, device: str, threads: int | None, model_name: str | None,
                  policy: str | None = None, kv_tokens: int | None = None, prefill_chunk: int = 256,
                  max_prompt_chars: int | None = None, replicas: int = 0, max_replicas: int | None = None,
                  max_ongoing_requests: int | None = None, max_queued_requests: int = -1) -> None:
    """Run the server until interrupted; /health says 503 while the model loads. `policy` (window, sinks, h2o,
    tova) with `kv_tokens` caps every request's KV cache on top of the graph's own decisions. `replicas` > 0:
    that many Ray Serve replicas of the same app (`prunex.serve.replicas`)."""
    from prunex.cli.policy_options import runtime_budget
    from prunex.errors import PrunexError
    from prunex.format import is_exported_dir, read_manifest
    from prunex.prune.training_free import training_free_policy
    from prunex.runtime.policy_hook import check_runtime_policy
    from prunex.runtime.session import choose_device
    from prunex.serve.app import ServeSettings, load_served_model, run

    choose_device(device)  # an unknown --device is refused before the server starts
    if policy is not None and kv_tokens is None:
        raise PrunexError("--policy needs --kv-tokens N for a server (requests have no length known in advance)")
    tokens = runtime_budget(policy, None, kv_tokens, 0)
    run_policy = None if tokens is None else training_free_policy(policy, tokens)
    if run_policy is not None and is_exported_dir(source):  # refused before start-up, not in the loading thread
        check_runtime_policy(run_policy, read_manifest(source))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = ServeSettings(host=host, port=port, api_key=api_key, max_batch=max_batch, max_queue=max_queue,
                             device=device, threads=threads, prefill_chunk=prefill_chunk,
                             max_prompt_chars=max_prompt_chars)
    if replicas:
        from prunex.serve import replicas as ray_replicas

        load = ray_replicas.LoadArgs(source, device, threads, max_batch, model_name, run_policy, settings)
        ray_replicas.run_local(load, ray_replicas.ReplicaSettings(
            replicas=replicas, max_replicas=max_replicas, max_ongoing_requests=max_ongoing_requests,
            max_queued_requests=max_queued_requests))
        return
    run(lambda: load_served_model(source, device, threads, max_batch, model_name, run_policy), settings)
