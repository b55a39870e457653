"""One decode measurement in a process of its own (so its peak RSS is its own): `python -m
prunex.bench.workers.decode ENGINE --dir D --batch B --context C --new-tokens N --threads T`; prints one JSON line.

ENGINE is `ort` (prunex's runtime over an exported dir, pruned or dense or int8) or `torch` (Hugging Face
`generate`, greedy, sdpa, on the exported dir's base model); both run on `--device`. Prompts: the first B
windows of C tokens of the held-out Wikipedia text, tokenized by the model's tokenizer. Times: prefill of the
whole batch (time to the first token of every row) and decode tokens/s over the N - 1 steps after it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from prunex.bench.rss import peak_rss_bytes
from prunex.prune.training_free import TRAINING_FREE


def bench_prompts(tokenizer, batch: int, context: int) -> list[list[int]]:
    """The first `batch` windows of `context` tokens of the held-out Wikipedia text."""
    from prunex.data.text import split_text, token_windows

    windows = token_windows(tokenizer, split_text("wikipedia", "test"), context, limit=batch)
    if windows.shape[0] < batch:
        raise SystemExit(f"the held-out text has only {windows.shape[0]} windows of {context} tokens")
    return windows.tolist()


def measure_ort(directory: str, batch: int, context: int, new_tokens: int, threads: int, device: str,
                policy: str | None = None, kv_tokens: int | None = None) -> dict:
    """prunex's Generator over an exported dir: all rows admitted in the first step, then decode steps;
    `policy` (window, sinks, h2o, tova) with `kv_tokens` adds a run-time keep policy."""
    from prunex.prune.policy_spec import PolicySpec
    from prunex.runtime.runtime import Runtime
    from prunex.runtime.sampling import SamplingParams

    spec = None if policy is None else PolicySpec(policy, kv_tokens)
    runtime = Runtime(directory, device=device, threads=threads, max_batch=batch, policy=spec)
    prompts = bench_prompts(runtime.tokenizer, batch, context)
    gen = runtime.generator()
    ids = [gen.add_request(p, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)) for p in prompts]
    started = time.perf_counter()
    gen.step()  # prefill every row: each gets its first token
    prefill = time.perf_counter() - started
    step_times = []
    for step in range(1, new_tokens):
        if step == new_tokens - 1:
            stats = gen.stats()  # before the last step, after which the finished rows leave the cache
        t = time.perf_counter()
        gen.step()
        step_times.append(time.perf_counter() - t)
    decode = sum(step_times)
    return {
        "time_to_first_token_s": prefill, "decode_tokens_per_s": batch * len(step_times) / decode,
        "decode_step_ms_median": 1e3 * sorted(step_times)[len(step_times) // 2],
        "kv_bytes": stats["kv_allocated_bytes"], "kv_held_bytes": stats["kv_bytes"],  # all rows still running
        "kv_peak_bytes": stats["kv_peak_allocated_bytes"], "dense_kv_bytes": stats["dense_kv_bytes"],
        "kv_kept_fraction": stats["kv_kept_fraction"], "device": runtime.device,
        "compactions": runtime.engine.cache.compactions, "first_tokens": gen.result(ids[0]).token_ids[:8],
    }


def measure_torch(directory: str, batch: int, context: int, new_tokens: int, threads: int,
                  device: str = "cpu") -> dict:
    """Hugging Face generate (greedy, sdpa, fp32) on the base model of the exported dir, on `device`."""
    from transformers import LogitsProcessor, LogitsProcessorList

    from prunex.devices import torch_device
    from prunex.format import read_manifest
    from prunex.models.sources import load_model

    torch.set_num_threads(threads)
    target = torch_device(device)
    base = load_model(read_manifest(directory).base_model)
    base.model.to(target)
    prompts = torch.tensor(bench_prompts(base.tokenizer, batch, context), device=target)  # (B, C)
    stamps: list[float] = []

    class Stamp(LogitsProcessor):  # called once per generated token, right after each forward pass
        def __call__(self, input_ids, scores):
            if target.type == "cuda":
                torch.cuda.synchronize(target)  # the step's kernels are done, not just queued
            stamps.append(time.perf_counter())
            return scores

    started = time.perf_counter()
    with torch.no_grad():
        out = base.model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False,
                                  logits_processor=LogitsProcessorList([Stamp()]), pad_token_id=0)
    decode = stamps[-1] - stamps[0]
    from prunex.tensors import kv_entry_bytes

    config = base.model.config
    per_token = kv_entry_bytes(config.num_key_value_heads, config.hidden_size // config.num_attention_heads)
    dense = batch * (context + new_tokens - 1) * config.num_hidden_layers * per_token
    return {
        "time_to_first_token_s": stamps[0] - started, "decode_tokens_per_s": batch * (len(stamps) - 1) / decode,
        "kv_bytes": dense, "dense_kv_bytes": dense, "first_tokens": out[0, context: context + 8].tolist(),
        "device": target.type,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("engine", choices=["ort", "torch"])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--context", type=int, required=True)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--policy", choices=list(TRAINING_FREE))
    parser.add_argument("--kv-tokens", type=int)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.engine == "ort":
        result = measure_ort(args.dir, args.batch, args.context, args.new_tokens, args.threads, args.device,
                             args.policy, args.kv_tokens)
    else:
        result = measure_torch(args.dir, args.batch, args.context, args.new_tokens, args.threads, args.device)
    result["peak_rss_bytes"] = peak_rss_bytes()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
