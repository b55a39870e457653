"""`prunex bench serve`: N concurrent streaming clients against `prunex serve`, the pruned export vs the dense
export behind the same server code, side by side in one run.

Each engine gets a server process of its own (`prunex serve DIR`, loopback, one at a time so they never share
the cores); for each client count, `requests` requests with real prompts of mixed lengths (held-out
Wikipedia windows, as token ids) stream `max_tokens` tokens each, greedy. Measured: requests/s, generated
tokens/s, time to first token and inter-token latency (p50/p99, at the client), the server's peak RSS, errors.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prunex.errors import PrunexError


@dataclass
class ServeBenchConfig:
    """What `prunex bench serve` measures."""

    clients: list[int] = field(default_factory=lambda: [8, 32, 64])  # concurrent streaming clients
    requests: int = 64  # requests per client count (a fixed amount of work)
    max_tokens: int = 32  # tokens generated per request
    prompt_lengths: list[int] = field(default_factory=lambda: [128, 512, 1024, 256])  # cycled over requests
    threads: int = 2
    max_batch: int = 16  # the server's --max-batch
    repeats: int = 1  # rounds; figures are medians over them
    replicas: list[int] = field(default_factory=list)  # instead of pruned vs dense: the pruned export on Ray
    #                                                    Serve with this many replicas, the first vs the last


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_prompts(directory: Path, config: ServeBenchConfig) -> list[list[int]]:
    """`requests` held-out Wikipedia windows, their lengths cycling through `prompt_lengths`."""
    from prunex.data.text import split_text, token_windows
    from prunex.runtime.runtime import load_tokenizer

    tokenizer, articles = load_tokenizer(directory), split_text("wikipedia", "test")
    lengths = config.prompt_lengths
    wanted = [lengths[i % len(lengths)] for i in range(config.requests)]
    windows = {}
    for length in set(lengths):
        windows[length] = token_windows(tokenizer, articles, length, limit=wanted.count(length)).tolist()
        if len(windows[length]) < wanted.count(length):
            raise PrunexError(f"the held-out text has only {len(windows[length])} windows of {length} tokens")
    return [windows[length].pop(0) for length in wanted]


async def _one(client, prompt: list[int], config: ServeBenchConfig) -> dict:
    """One streaming request: times of its tokens (client side)."""
    started, stamps = time.perf_counter(), []
    body = {"model": "bench", "prompt": prompt, "max_tokens": config.max_tokens, "temperature": 0,
            "stream": True, "ignore_eos": True}
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                return {"error": f"HTTP {response.status_code}"}
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        return {"error": chunk["error"]["message"]}
                    if chunk["choices"] and chunk["choices"][0]["text"]:
                        stamps.append(time.perf_counter())
    except Exception as err:  # a failed connection counts as an error of the run
        return {"error": str(err)}
    return {"ttft": stamps[0] - started if stamps else None, "gaps": np.diff(stamps).tolist(), "tokens": len(stamps)}


async def _load(base: str, prompts: list[list[int]], clients: int, config: ServeBenchConfig) -> dict:
    """`clients` workers take the prompts in turn until all are done."""
    import httpx

    pending = list(prompts)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        async def worker():
            while pending:
                results.append(await _one(client, pending.pop(0), config))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - started
    ok = [r for r in results if "error" not in r]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    gaps = [g for r in ok for g in r["gaps"]]
    pct = lambda values, q: float(np.percentile(values, q)) if values else None  # noqa: E731
    return {"clients": clients, "requests": len(results), "errors": len(results) - len(ok),
            "first_error": next((r["error"] for r in results if "error" in r), None), "seconds": seconds,
            "requests_per_s": len(ok) / seconds, "tokens_per_s": sum(r["tokens"] for r in ok) / seconds,
            "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99),
            "itl_p50_s": pct(gaps, 50), "itl_p99_s": pct(gaps, 99)}


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _tree_peak_rss(pid: int) -> int:
    """Peak RSS of a process and all its descendants (a Ray deployment: driver, raylet, proxy, replicas)."""
    import psutil

    pids = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    total = 0
    for each in pids:
        try:
            total += _peak_rss(each)
        except OSError:  # it ended meanwhile
            pass
    return total


def _serve(directory: Path, config: ServeBenchConfig, port: int, clients: int,
           extra: tuple[str, ...] | list[str] = ()) -> subprocess.Popen:
    """`prunex serve DIR` on loopback in a process of its own (`extra`: more options)."""
    command = [sys.executable, "-c", "from prunex.cli.main import main; main()", "serve", str(directory),
               "--port", str(port), "--device", "cpu", "--threads", str(config.threads),
               "--max-batch", str(config.max_batch),
               "--max-queue", str(max(clients, config.requests)), "--model-name", "bench", *extra]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_healthy(base: str, server: subprocess.Popen, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise PrunexError(f"the server exited with code {server.returncode} before it was ready")
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise PrunexError("the server did not get ready in time")
        time.sleep(0.5)


FIGURES = ("requests_per_s", "tokens_per_s", "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s", "peak_rss_bytes",
           "errors")


def _cell(engine: str, directory: Path, extra: list[str], prompts: list[list[int]], clients: int,
          config: ServeBenchConfig, progress) -> dict:
    """One engine at one client count, on a fresh server (so the peak RSS is this cell's)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = _serve(directory, config, port, clients, extra)
    try:
        _wait_healthy(base, server)
        row = asyncio.run(_load(base, prompts, clients, config))
        row.update(engine=engine, peak_rss_bytes=_tree_peak_rss(server.pid))
    finally:
        server.terminate()  # a Ray deployment shuts down on SIGTERM too
        server.wait(timeout=120)
    progress(f"  {engine}, {clients} clients: {row['requests_per_s']:.2f} req/s, {row['tokens_per_s']:.1f} tok/s, "
             f"errors {row['errors']}")
    return row


def bench_serve(source: str | None, baseline: str | None, config: ServeBenchConfig, progress=print) -> dict:
    """Rounds of (client count x engine), the engines in turn within a round so that a noisy machine hits both;
    figures are medians over rounds, the tokens/s ratio the median of the rounds' own ratios."""
    from prunex.bench.decode import resolve_dirs

    main, dense = resolve_dirs(source, baseline)
    prompts = bench_prompts(main, config)
    if config.replicas:  # the first replica count against the last, each a Ray Serve deployment
        counts = config.replicas
        engines = [(f"{n} replica{'s' * (n > 1)}", main, ["--replicas", str(n)]) for n in (counts[0], counts[-1])]
    else:
        engines = [("prunex", main, []), ("baseline", dense, [])]
    compared, reference = engines[0][0], engines[-1][0]
    cells: dict[tuple[str, int], list[dict]] = {}
    for round_ in range(config.repeats):
        for clients in config.clients:
            progress(f"round {round_ + 1}/{config.repeats}, {clients} clients, {len(prompts)} requests ...")
            for engine, directory, extra in engines:
                cells.setdefault((engine, clients), []).append(_cell(engine, directory, extra, prompts, clients,
                                                                     config, progress))
    rows = []
    for (engine, clients), runs in cells.items():
        row = {"engine": engine, "clients": clients, "runs": runs,
               **{k: float(np.median([r[k] for r in runs if r[k] is not None] or [np.nan])) for k in FIGURES}}
        if engine == compared:
            ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs, cells[(reference, clients)])]
            row["tokens_per_s_vs_baseline"] = float(np.median(ratios))
        rows.append(row)
    return {"config": config.__dict__, "dirs": {"prunex": str(main), "baseline": str(dense)},
            "prompt_tokens": [len(p) for p in prompts], "rows": rows}


def markdown(report: dict) -> str:
    """The report as a table, the engines side by side per client count (medians over rounds)."""
    lines = ["| clients | engine | req/s | gen tok/s | vs baseline | TTFT p50 / p99 s | ITL p50 / p99 ms | peak RSS GB "
             "| errors |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(report["rows"], key=lambda r: (r["clients"], "tokens_per_s_vs_baseline" not in r)):
        ratio = f"x{r['tokens_per_s_vs_baseline']:.2f}" if "tokens_per_s_vs_baseline" in r else ""
        lines.append(f"| {r['clients']} | {r['engine']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
                     f"{ratio} | {r['ttft_p50_s']:.1f} / {r['ttft_p99_s']:.1f} | {1000 * r['itl_p50_s']:.0f} / "
                     f"{1000 * r['itl_p99_s']:.0f} | {r['peak_rss_bytes'] / 1e9:.2f} | {r['errors']:.0f} |")
    return "\n".join(lines)
