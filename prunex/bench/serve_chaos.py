"""`prunex bench serve --chaos`: what one hostile request does to everyone else, measured on a real server.

The same export is served twice in turn (loopback, one server at a time): with prompts prefilled whole between
two decode steps (`--prefill-chunk 0`, the schedule before chunked prefill) and a chunk a step
(`--prefill-chunk N`). On each, from a fresh start:
1. scoring: a long prompt (default ~8,000 tokens of held-out Wikipedia) with `echo` + `logprobs: 5` and
   `max_tokens: 0`; the server's RSS rise (its peak after, VmHWM, minus its RSS before);
2. stall: a stream runs; a second client sends the long prompt as text with `max_tokens: 1`; the stream's gaps
   between tokens before it and while it is tokenized and prefilled (p50 / p99 / max), its time to first token,
   and `/health` polled every 50 ms meanwhile (the slowest answer);
3. hostile input: a lone surrogate, more prompts than the server can ever hold, text over the character limit,
   a float as a token id, `HEAD /health`, a disconnect storm of streams dropped after their first token; then
   the rows, waiting requests and K/V bytes left behind (all must be 0) and a normal completion.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunex.bench.serve import ServeBenchConfig, _free_port, _peak_rss, _serve, _wait_healthy


@dataclass
class ChaosConfig:
    """What `prunex bench serve --chaos` sends."""

    long_prompt_tokens: int = 8000  # the long prompt (SmolLM2 reads 8,192 positions)
    prefill_chunk: int = 256  # the chunked server's --prefill-chunk
    storm: int = 32  # streams opened and dropped in the disconnect storm
    threads: int = 2


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def long_text(directory: Path, tokens: int) -> str:
    """About `tokens` tokens of held-out Wikipedia, as text."""
    from prunex.data.text import split_text, token_windows
    from prunex.runtime.runtime import load_tokenizer

    tokenizer = load_tokenizer(directory)
    [window] = token_windows(tokenizer, split_text("wikipedia", "test"), tokens, limit=1).tolist()
    return tokenizer.decode(window)


def _score(base: str, text: str, pid: int) -> dict:
    import httpx

    before = _rss(pid)
    started = time.perf_counter()
    answer = httpx.post(f"{base}/v1/completions", timeout=600, json={
        "model": "bench", "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 5})
    seconds = time.perf_counter() - started
    scored = len(answer.json()["choices"][0]["logprobs"]["token_logprobs"]) if answer.status_code == 200 else 0
    return {"status": answer.status_code, "seconds": seconds, "scored_tokens": scored,
            "rss_rise_bytes": _peak_rss(pid) - before}


def _stall(base: str, text: str) -> dict:
    """A stream, then the long prompt beside it; /health polled all along."""
    import httpx

    stamps: list[float] = []
    health: list[tuple[float, float]] = []  # (sent, seconds)
    window: dict[str, float] = {}
    stop = threading.Event()

    def stream():
        body = {"model": "bench", "prompt": "The history of", "max_tokens": 4000, "stream": True,
                "ignore_eos": True, "temperature": 0}
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=600) as answer:
            for line in answer.iter_lines():
                if line.startswith("data: {"):
                    stamps.append(time.perf_counter())
                if stop.is_set():
                    return  # closing the connection cancels the stream

    def poll():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                sent = time.perf_counter()
                client.get(f"{base}/health")
                health.append((sent, time.perf_counter() - sent))
                time.sleep(0.05)

    threads = [threading.Thread(target=stream), threading.Thread(target=poll)]
    for t in threads:
        t.start()
    while len(stamps) < 30:  # the stream is in its stride
        time.sleep(0.05)
    window["sent"] = time.perf_counter()
    answer = httpx.post(f"{base}/v1/completions", timeout=600,
                        json={"model": "bench", "prompt": text, "max_tokens": 1, "temperature": 0})
    window["answered"] = time.perf_counter()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    gaps = np.diff(stamps)  # gaps[i] ends at stamps[i + 1]
    ends = np.asarray(stamps[1:])
    before = gaps[ends < window["sent"]]
    during = gaps[(ends >= window["sent"]) & (ends <= window["answered"] + 0.5)]
    polled = [s for sent, s in health if window["sent"] <= sent <= window["answered"]]
    pct = lambda values, q: float(np.percentile(values, q)) if len(values) else None  # noqa: E731
    return {"status": answer.status_code,
            "long_prompt_tokens": answer.json()["usage"]["prompt_tokens"] if answer.status_code == 200 else None,
            "long_seconds": window["answered"] - window["sent"],
            "itl_before_p50_s": pct(before, 50), "itl_before_p99_s": pct(before, 99),
            "itl_during_p50_s": pct(during, 50), "itl_during_p99_s": pct(during, 99),
            "itl_during_max_s": float(during.max()) if len(during) else None, "tokens_during": int(len(during)),
            "health_max_s": max(polled) if polled else None, "health_polls": len(polled)}


def _hostile(base: str, storm: int) -> dict:
    import httpx

    raw = {"content-type": "application/json"}
    statuses = {
        "surrogate": httpx.post(f"{base}/v1/completions", headers=raw,
                                content=rb'{"model": "bench", "prompt": "abc\ud800def", "max_tokens": 2}'),
        "never_fits": httpx.post(f"{base}/v1/completions", json={"model": "bench", "prompt": ["a"] * 10_000,
                                                                 "max_tokens": 1}),
        "over_char_limit": httpx.post(f"{base}/tokenize", json={"prompt": "x" * 4_000_000}, timeout=60),
        "float_token_id": httpx.post(f"{base}/v1/completions", json={"model": "bench", "prompt": [5, 14622.0]}),
        "head_health": httpx.head(f"{base}/health"),
    }
    result = {name: answer.status_code for name, answer in statuses.items()}
    for _ in range(storm):  # streams dropped after their first token
        with httpx.stream("POST", f"{base}/v1/completions", timeout=120, json={
                "model": "bench", "prompt": "Once", "max_tokens": 500, "stream": True, "ignore_eos": True}) as answer:
            for line in answer.iter_lines():
                if line.startswith("data: {"):
                    break
    deadline, left = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        text = httpx.get(f"{base}/metrics").text
        left = {name: float(line.split()[-1]) for line in text.splitlines() for name in (
            "prunex:num_requests_running", "prunex:num_requests_waiting", "prunex:kv_cache_bytes")
            if line.startswith(name + " ")}
        if not any(left.values()):
            break
        time.sleep(0.2)
    result["left_after_storm"] = left
    result["completion_after"] = httpx.post(f"{base}/v1/completions", timeout=60, json={
        "model": "bench", "prompt": "Hi", "max_tokens": 4}).status_code
    return result


def bench_chaos(source: str | None, config: ChaosConfig, progress=print) -> dict:
    """Both schedules in turn on SOURCE's export (see the module docstring)."""
    from prunex.bench.decode import resolve_dirs

    directory, _ = resolve_dirs(source, None)
    text = long_text(directory, config.long_prompt_tokens)
    rows = []
    for chunk in (0, config.prefill_chunk):
        schedule = "whole prompts" if chunk == 0 else f"chunks of {chunk}"
        progress(f"{schedule}: starting a server on {directory} ...")
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        serve_config = ServeBenchConfig(threads=config.threads, max_batch=16, requests=16)
        server = _serve(directory, serve_config, port, 16, extra=["--prefill-chunk", str(chunk)])
        try:
            _wait_healthy(base, server)
            import httpx

            httpx.post(f"{base}/v1/completions", json={"model": "bench", "prompt": "Hi", "max_tokens": 2}, timeout=60)
            row = {"prefill_chunk": chunk, "scoring": _score(base, text, server.pid)}
            progress(f"  scoring: {json.dumps(row['scoring'])}")
            row["stall"] = _stall(base, text)
            progress(f"  stall: {json.dumps(row['stall'])}")
            row["hostile"] = _hostile(base, config.storm)
            progress(f"  hostile: {json.dumps(row['hostile'])}")
        finally:
            server.terminate()
            server.wait(timeout=60)
        rows.append(row)
    return {"dir": str(directory), "config": config.__dict__, "rows": rows}


def markdown(report: dict) -> str:
    """The two schedules side by side."""
    lines = ["| schedule | ITL p50 before | ITL p50 / p99 / max during the long prompt | tokens during | long prompt "
             "TTFT | /health max | scoring RSS rise |", "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        s, c = row["stall"], row["scoring"]
        name = "whole prompts (`--prefill-chunk 0`)" if row["prefill_chunk"] == 0 else \
            f"chunks of {row['prefill_chunk']}"
        lines.append(f"| {name} | {1000 * s['itl_before_p50_s']:.0f} ms | {1000 * s['itl_during_p50_s']:.0f} / "
                     f"{1000 * s['itl_during_p99_s']:.0f} / {1000 * s['itl_during_max_s']:.0f} ms | "
                     f"{s['tokens_during']} | {s['long_seconds']:.1f} s | {1000 * s['health_max_s']:.0f} ms | "
                     f"{c['rss_rise_bytes'] / 2**20:.0f} MiB ({c['scored_tokens']} tokens) |")
    return "\n".join(lines)
