"""`prunex bench decode | serve | classify`: speed side by side in one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from prunex.cli.options import Json, KvBudget, KvTokens, Policy
from prunex.errors import PrunexError

app = typer.Typer(help="Measure speed side by side in one run.", no_args_is_help=True)


@app.command("decode")
def bench_decode_command(
    source: Optional[str] = typer.Argument(
        None, help="Exported dir (pruned, dense or int8), or a DCP checkpoint / model name to export (cached); "
        "default: the built-in DCP model."
    ),
    baseline: Optional[str] = typer.Option(
        None, help="Exported dir to compare with (default: the dense export of the same model)."
    ),
    batch: list[int] = typer.Option([1, 8, 16], "--batch", min=1, help="Rows decoded together (repeatable)."),
    context: list[int] = typer.Option([512, 1024, 2048], "--context", min=8, help="Prompt tokens (repeatable)."),
    new_tokens: int = typer.Option(64, min=3, help="Tokens generated per row."),
    threads: int = typer.Option(2, min=1, help="Threads for every engine."),
    repeats: int = typer.Option(1, min=1, help="Rounds of all engines in turn: medians, and the median of the "
                                "rounds' ratios (use 3-5 on a noisy machine)."),
    device: str = typer.Option("cpu", help="cpu or cuda for the ONNX Runtime engines."),
    torch_peer: bool = typer.Option(True, "--torch/--no-torch", help="Also run Hugging Face generate."),
    optimum_python: Optional[str] = typer.Option(
        None, help="Python of an environment with optimum-onnx (transformers<4.58): adds Optimum's ORT model."
    ),
    openvino_python: Optional[str] = typer.Option(
        None, help="Python of an environment with openvino-genai (scripts/openvino_env.sh): adds OpenVINO GenAI "
        "dense and with its K/V eviction held to the share prunex kept (figures under openvino_*)."
    ),
    peer: list[str] = typer.Option([], "--peer", help="Also run a dense peer of another project (repeatable): "
                                   "ortgenai (onnxruntime-genai, at prunex's precision), llamacpp (llama.cpp: "
                                   "Q8_0 beside int8, else the packaged Q4_1; CMAKE_ARGS=-DGGML_NATIVE=ON pip "
                                   "install llama-cpp-python, ~10 min)."),
    policy: Policy = None,
    kv_budget: KvBudget = None,
    kv_tokens: KvTokens = None,
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="PNG of the results (default: beside --out)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the JSON report to this file."),
    as_json: Json = False,
) -> None:
    """Decode tokens/s, time to first token, KV bytes and peak RSS: prunex vs the dense export (same runtime)
    vs PyTorch generate, on the same Wikipedia prompts, each engine in a process of its own. --policy runs on
    SOURCE only (give the same dir as --baseline to see its effect); --kv-budget is a fraction of the largest
    --context + --new-tokens."""
    from prunex.bench.decode import PEERS, DecodeBenchConfig, bench_decode, plot
    from prunex.prune.policy_spec import PolicySpec

    unknown = sorted(set(peer) - set(PEERS))
    if unknown:
        raise PrunexError(f"--peer {', '.join(unknown)} is not available; peers: {', '.join(PEERS)}")

    spec = PolicySpec.from_options(policy, kv_budget, kv_tokens, max(context) + new_tokens)
    tokens = None if spec is None else spec.kv_tokens
    config = DecodeBenchConfig(batches=list(batch), contexts=list(context), new_tokens=new_tokens,
                               threads=threads, device=device, torch_peer=torch_peer, optimum_python=optimum_python,
                               openvino_python=openvino_python,
                               repeats=repeats, peers=list(peer), policy=policy, kv_tokens=tokens)
    report = bench_decode(source, baseline, config, progress=lambda line: typer.echo(line, err=True))
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")
    png = plot_path or (out.with_suffix(".png") if out is not None else None)  # nothing written unasked
    if png is not None:
        if plot(report, png):
            typer.echo(f"plot: {png}", err=True)
        else:
            typer.echo("no plot: matplotlib is not installed (pip install 'prunex[bench]')", err=True)
    if as_json:
        typer.echo(json.dumps(report))

@app.command("serve")
def bench_serve_command(
    source: Optional[str] = typer.Argument(
        None, help="Exported dir, or a DCP checkpoint / model name to export (cached); default: the built-in model."
    ),
    baseline: Optional[str] = typer.Option(None, help="Exported dir to compare with (default: the dense export)."),
    clients: list[int] = typer.Option([8, 32, 64], "--clients", min=1, help="Concurrent streaming clients "
                                      "(repeatable)."),
    requests: int = typer.Option(64, min=1, help="Requests per client count (real prompts of mixed lengths)."),
    max_tokens: int = typer.Option(32, min=1, help="Tokens generated per request (greedy)."),
    prompt_length: list[int] = typer.Option([128, 512, 1024, 256], "--prompt-length", min=2,
                                            help="Prompt lengths, cycled over the requests (repeatable)."),
    max_batch: int = typer.Option(16, min=1, help="The server's --max-batch."),
    threads: int = typer.Option(2, min=1, help="The server's ONNX Runtime threads."),
    repeats: int = typer.Option(1, min=1, help="Rounds, the engines in turn in each (medians; use 2-3 on a noisy "
                                "machine)."),
    replicas: list[int] = typer.Option([], "--replicas", min=1, help="Instead of pruned vs dense: the export on "
                                       "Ray Serve with the first and the last replica count given (e.g. "
                                       "--replicas 2 --replicas 1)."),
    chaos: bool = typer.Option(False, "--chaos", help="Instead of the load test: what one hostile request does to "
                               "the others (a long prompt beside a stream, prompt scoring's memory, bad input, a "
                               "disconnect storm), with whole-prompt and chunked prefill side by side."),
    long_prompt: int = typer.Option(8000, min=16, help="--chaos: tokens of the long prompt."),
    prefill_chunk: int = typer.Option(256, min=16, help="--chaos: the chunked server's --prefill-chunk."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the JSON report to this file."),
    as_json: Json = False,
) -> None:
    """Load test of `prunex serve`: N concurrent streaming clients, the pruned export vs the dense export behind
    the same server, side by side: requests/s, tokens/s, TTFT and inter-token latency p50/p99, peak RSS, errors.
    With --chaos: the hostile-client run instead."""
    progress = lambda line: typer.echo(line, err=True)  # noqa: E731
    if chaos:
        from prunex.bench import serve_chaos

        config = serve_chaos.ChaosConfig(long_prompt_tokens=long_prompt, prefill_chunk=prefill_chunk,
                                         threads=threads)
        report = serve_chaos.bench_chaos(source, config, progress=progress)
        if out is not None:
            out.write_text(json.dumps(report, indent=2) + "\n")
        typer.echo(json.dumps(report) if as_json else serve_chaos.markdown(report))
        return
    from prunex.bench.serve import ServeBenchConfig, bench_serve, markdown

    config = ServeBenchConfig(clients=list(clients), requests=requests, max_tokens=max_tokens,
                              prompt_lengths=list(prompt_length), threads=threads, max_batch=max_batch,
                              repeats=repeats, replicas=list(replicas))
    report = bench_serve(source, baseline, config, progress=progress)
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")
    typer.echo(json.dumps(report) if as_json else markdown(report))

@app.command("classify")
def bench_classify_command(
    source: str = typer.Argument(..., help="An LTP checkpoint dir (hard stage)."),
    task: Optional[str] = typer.Option(
        None, help="bbc, rotten-tomatoes, or a CSV/JSONL file (default: the checkpoint's own task)."
    ),
    split: Optional[str] = typer.Option(
        None, help="train, validation, test or all (default: test; all for a file the model did not train on)."
    ),
    engine: str = typer.Option("ort", help="ort: the LTP and dense exports in ONNX Runtime, fp32 and int8; "
                               "torch: the checkpoint and its stage-1 model in PyTorch."),
    batch: list[int] = typer.Option([1, 16], "--batch", min=1, help="ort: examples per run (repeatable)."),
    batch_size: int = typer.Option(16, min=1, help="torch: examples per forward (length-sorted batches)."),
    repeats: int = typer.Option(3, min=1, help="Timed rounds of every engine in turn (medians reported)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Use the first N examples only."),
    threads: int = typer.Option(0, min=0, help="Threads per engine (0: ort 1, torch torch's default)."),
    out: Optional[Path] = typer.Option(None, "--out", help="ort: also write the JSON report to this file."),
    as_json: Json = False,
) -> None:
    """Classification throughput, pruned vs dense on the same examples in one run: by default the exported
    LTP encoder against the dense export of the same classifier in ONNX Runtime (fp32 and int8)."""
    if engine == "ort":
        from prunex.bench.classify_ort import OrtClassifyConfig, bench_classify_ort

        config = OrtClassifyConfig(task=task, split=split, batches=list(batch), repeats=repeats, limit=limit,
                                   threads=threads or 1)
        report = bench_classify_ort(source, config, progress=lambda line: typer.echo(line, err=True))
        if out is not None:
            out.write_text(json.dumps(report, indent=2) + "\n")
        if as_json:
            typer.echo(json.dumps(report))
            return
        typer.echo(f"{report['examples']} {report['task']} {report['split']} examples, {report['mean_tokens']} "
                   f"tokens, relative FLOPs {report['relative_flops']:.3f}, {report['threads']} thread(s):")
        for row in report["rows"]:
            rates = ", ".join(f"{name} {e['examples_per_s']:.2f} ex/s ({e['accuracy']:.4f})"
                              for name, e in row["engines"].items())
            typer.echo(f"  batch {row['batch']}: {rates}; pruned/dense fp32 x{row['pruned_vs_dense_fp32']:.2f}, "
                       f"int8 x{row['pruned_vs_dense_int8']:.2f}")
        return
    if engine != "torch":
        raise PrunexError(f"--engine must be ort or torch, not {engine!r}")
    import torch

    from prunex.bench.classify import bench_classify
    from prunex.checkpoints.ltp import read_ltp_meta
    from prunex.data.labelled import default_split

    if threads:
        torch.set_num_threads(threads)
    trained_on = read_ltp_meta(source).training["task"]
    task = task or trained_on
    result = bench_classify(source, task, split or default_split(task, trained_on), batch_size, repeats, limit)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        typer.echo(
            f"pruned {result.pruned_examples_per_s:.2f} ex/s vs dense {result.dense_examples_per_s:.2f} ex/s: "
            f"x{result.speedup:.2f} (relative FLOPs {result.relative_flops:.3f}; accuracy "
            f"{result.pruned_accuracy:.4f} vs {result.dense_accuracy:.4f}; {result.examples} examples, "
            f"{result.threads} threads, median of {result.repeats})"
        )
