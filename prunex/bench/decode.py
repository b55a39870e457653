"""`prunex bench decode`: decode throughput, time to first token, KV bytes and peak RSS, side by side in one run.

Engines, each measured in a process of its own (`prunex.bench.workers.decode`) on the same prompts:
- prunex: the runtime over the pruned export (or any exported dir given, int8 included);
- baseline: the runtime over a second exported dir (by default the dense export of the same base model);
- torch: Hugging Face `generate` (greedy, sdpa, fp32) on the base model;
- peers (`--peer`): ortgenai, onnxruntime-genai's fused dense graph of the same base model, built by its model
  builder at prunex's precision (int8 or int4 beside a prunex dir of those weights, else fp32;
  `prunex.bench.workers.ortgenai`);
  llamacpp, llama.cpp on the packaged SmolLM2 GGUF (Q8_0 beside int8, else the packaged Q4_1;
  `prunex.bench.workers.llamacpp`).
- from environments of their own (run by path under another Python): `--optimum-python`, Optimum's ORT model;
  `--openvino-python`, OpenVINO GenAI (`prunex.bench.workers.openvino_peer`) dense (`openvino`) and with its own
  K/V eviction held to the share of the K/V prunex kept in the same round (`openvino_evict`).
The memory-bandwidth floor of a decode step (read the weights a step uses and the K/V held, once: the token
embedding's table is not read, only B of its rows) is measured in the same run, so the distance to the limit is
visible.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from prunex.cache import cache_dir
from prunex.errors import PrunexError

logger = logging.getLogger(__name__)


@dataclass
class DecodeBenchConfig:
    """What `prunex bench decode` measures."""

    batches: list[int] = field(default_factory=lambda: [1, 8, 16])
    contexts: list[int] = field(default_factory=lambda: [512, 1024, 2048])  # prompt tokens per row
    new_tokens: int = 64  # generated per row (the first comes from the prefill)
    threads: int = 2
    device: str = "cpu"
    torch_peer: bool = True
    optimum_python: str | None = None  # python of an env with optimum-onnx (transformers<4.58): adds that peer
    openvino_python: str | None = None  # python of an env with openvino-genai + optimum-intel: adds those peers
    repeats: int = 1  # rounds of every engine in turn; figures are medians, ratios the median of each round's
    peers: list[str] = field(default_factory=list)  # dense engines of other projects to run beside: "ortgenai"
    policy: str | None = None  # a run-time keep policy (window, sinks, h2o, tova) for the prunex engine only
    kv_tokens: int | None = None  # its budget: cached tokens per row and layer


def resolve_dirs(source: str | None, baseline: str | None) -> tuple[Path, Path]:
    """The exported dirs to compare: SOURCE (exported, or exported now) and the baseline (default: dense)."""
    from prunex.export.cached import cached_export
    from prunex.format import is_exported_dir, read_manifest

    if source is not None and is_exported_dir(source):
        main = Path(source)
        if baseline is None:
            recorded = read_manifest(main).source
            baseline_dir = cached_export(recorded or None, dense=True)
        else:
            baseline_dir = Path(baseline)
    else:
        main = cached_export(source, dense=False)
        baseline_dir = Path(baseline) if baseline else cached_export(source, dense=True)
    if not is_exported_dir(baseline_dir):
        raise PrunexError(f"--baseline {baseline_dir} is not an exported dir (prunex export)")
    return main, baseline_dir


PEERS = ("ortgenai", "llamacpp")  # --peer choices
ENGINES = ("prunex", "baseline", "torch", "optimum", "openvino", "openvino_evict", *PEERS)  # in report order


def weights_of(manifest) -> str:
    """An exported dir's weight type for a peer at the same precision: fp32, int8 or int4."""
    weights = manifest.quantization.get("weights", "fp32")
    return "fp32" if weights == "float32" else weights  # float32: `prunex quantize --mode none` (a K/V cache alone)


def _run_worker(engine: str, directory: Path, batch: int, context: int, config: DecodeBenchConfig,
                with_policy: bool = False) -> dict:
    """One measurement in a worker process: prunex's runtime (`ort`), `torch`, or a peer (`ortgenai`)."""
    if engine in PEERS:
        from prunex.format import read_manifest

        weights = weights_of(read_manifest(directory))
        args = (["prunex.bench.workers.ortgenai", "--precision", weights] if engine == "ortgenai"
                else ["prunex.bench.workers.llamacpp", "--precision", "q8_0" if weights == "int8" else "q4_1"])
    else:
        args = ["prunex.bench.workers.decode", engine, "--device", config.device]
        if with_policy and config.policy:
            args += ["--policy", config.policy, "--kv-tokens", str(config.kv_tokens)]
    command = [sys.executable, "-m", *args, "--dir", str(directory), "--batch", str(batch), "--context",
               str(context), "--new-tokens", str(config.new_tokens), "--threads", str(config.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_in_env(engine: str, main_dir: Path, batch: int, context: int, config: DecodeBenchConfig,
                max_cache: int = 0) -> dict:
    """A peer from an environment of its own (`optimum`, `openvino`, `openvino_evict` with `max_cache` tokens a
    row), its worker run by path under that environment's Python on the same prompts."""
    import tempfile

    from prunex.bench.workers.decode import bench_prompts
    from prunex.format import read_manifest
    from prunex.models.sources import hf_model_dir
    from prunex.runtime.runtime import load_tokenizer

    manifest = read_manifest(main_dir)
    base = manifest.base_model
    model_dir = hf_model_dir(base)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(bench_prompts(load_tokenizer(main_dir), batch, context), f)
    workers = Path(__file__).parent / "workers"
    if engine == "optimum":
        command = [config.optimum_python, str(workers / "optimum_peer.py"), "--export",
                   str(cache_dir("optimum") / base)]
    else:  # at prunex's weight precision (int8 beside int8 or int4 weights)
        weights = "fp32" if weights_of(manifest) == "fp32" else "int8"
        command = [config.openvino_python, str(workers / "openvino_peer.py"), "--weights", weights, "--export",
                   str(cache_dir("openvino") / f"{Path(base).name}-{weights}"), "--max-cache", str(max_cache)]
    command += ["--model", str(model_dir), "--prompts", f.name, "--new-tokens", str(config.new_tokens),
                "--threads", str(config.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    Path(f.name).unlink()
    if done.returncode != 0:
        return {"error": " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _kept_tokens(prunex_run: dict, context: int, new_tokens: int) -> int:
    """Tokens a row of prunex's run held at the end (its kept share of context + new tokens), at least 1."""
    return max(1, round(prunex_run.get("kv_kept_fraction", 1.0) * (context + new_tokens)))


def memory_bandwidth(size_bytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Bytes/s of a large copy (read + write counted), the best of `repeats`."""
    source = np.ones(size_bytes // 4, np.float32)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * size_bytes / best


def step_weight_bytes(directory: Path) -> int:
    """Bytes of the graph's weights that a decode step reads in full: every initializer but the tables it only
    gathers rows from (the token embedding: a step reads B of its rows, not the table)."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    from prunex.format import read_manifest

    model = directory / read_manifest(directory).model_file
    graph = onnx.load(str(model), load_external_data=False).graph
    gathered_only: dict[str, bool] = {}
    for node in _all_nodes(graph):
        for slot, name in enumerate(node.input):
            gathered_only[name] = gathered_only.get(name, True) and node.op_type == "Gather" and slot == 0
    return sum(math.prod(t.dims) * np.dtype(tensor_dtype_to_np_dtype(t.data_type)).itemsize
               for t in graph.initializer if not gathered_only.get(t.name, False))


def _all_nodes(graph):
    """The nodes of `graph` and of its subgraphs (an `If`'s branches)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            subgraphs = [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs
            for subgraph in subgraphs:
                yield from _all_nodes(subgraph)


def _floor_tokens_per_s(batch: int, weights: int, kv_bytes: int, bandwidth: float) -> float:
    """Tokens/s if a decode step only had to read the weights and the K/V once at `bandwidth`."""
    return batch / ((weights + kv_bytes) / bandwidth)


def bench_decode(source: str | None, baseline: str | None, config: DecodeBenchConfig, progress=logger.info) -> dict:
    """Run every (batch, context) for every engine; returns {"results": [...], "machine": {...}}."""
    main_dir, baseline_dir = resolve_dirs(source, baseline)
    if config.policy is not None:  # refused now (e.g. h2o on an export without attention scores), not per worker
        from prunex.format import read_manifest
        from prunex.prune.policy_spec import PolicySpec
        from prunex.runtime.policy_hook import check_runtime_policy

        check_runtime_policy(PolicySpec(config.policy, config.kv_tokens), read_manifest(main_dir))
    bandwidth = memory_bandwidth()
    results = []
    for context in config.contexts:
        for batch in config.batches:
            row: dict = {"batch": batch, "context": context, "new_tokens": config.new_tokens}
            engines = [("prunex", "ort", main_dir), ("baseline", "ort", baseline_dir)]
            if config.torch_peer:
                engines.append(("torch", "torch", main_dir))
            if config.optimum_python:
                engines.append(("optimum", "optimum", main_dir))
            if config.openvino_python:
                engines += [("openvino", "openvino", main_dir), ("openvino_evict", "openvino", main_dir)]
            engines += [(peer, peer, main_dir) for peer in config.peers]  # at prunex's precision
            rounds: dict[str, list[dict]] = {label: [] for label, _, _ in engines}
            for round_index in range(config.repeats):
                for label, engine, directory in engines:
                    tag = f" (round {round_index + 1}/{config.repeats})" if config.repeats > 1 else ""
                    progress(f"b{batch} ctx{context}: {label}{tag} ...")
                    if engine in ("optimum", "openvino"):
                        kept = (_kept_tokens(rounds["prunex"][-1], context, config.new_tokens)
                                if label == "openvino_evict" else 0)
                        rounds[label].append(_run_in_env(engine, main_dir, batch, context, config, kept))
                    else:
                        rounds[label].append(_run_worker(engine, directory, batch, context, config,
                                                         with_policy=label == "prunex"))
            for label, runs in rounds.items():
                _add_median_run(row, label, runs)
            _kv_ratio_and_floor(row, main_dir, baseline_dir, bandwidth)
            _round_ratios(row, rounds)
            progress(_summary(row))
            results.append(row)
    return {
        "results": results, "prunex_dir": str(main_dir), "baseline_dir": str(baseline_dir),
        "config": asdict(config), "memory_bandwidth_gb_s": bandwidth / 1e9,
    }


def _add_median_run(row: dict, label: str, runs: list[dict]) -> None:
    """row[label]: the run with the median decode tokens/s (its figures stay consistent), or the first error;
    row[f"{label}_tokens_per_s_runs"]: every round's tokens/s."""
    done = sorted((r for r in runs if "decode_tokens_per_s" in r), key=lambda r: r["decode_tokens_per_s"])
    if not done:
        row[label] = runs[0]
        return
    measured = row[label] = done[(len(done) - 1) // 2]
    for key in ("decode_tokens_per_s", "time_to_first_token_s", "kv_bytes", "peak_rss_bytes"):
        if key in measured:
            short = "tokens_per_s" if key == "decode_tokens_per_s" else key
            row[f"{label}_{short}"] = measured[key]
    if len(runs) > 1:
        row[f"{label}_tokens_per_s_runs"] = [r.get("decode_tokens_per_s") for r in runs]


def _round_ratios(row: dict, rounds: dict[str, list[dict]]) -> None:
    """speedup_vs_<peer>: the median of the rounds' own ratios (each round runs the engines back to back, so a
    ratio within a round sees the least drift of the machine); with several rounds, the list of them too."""
    prunex = rounds["prunex"]
    for peer, runs in rounds.items():
        ratios = [p["decode_tokens_per_s"] / r["decode_tokens_per_s"] for p, r in zip(prunex, runs)
                  if peer != "prunex" and "decode_tokens_per_s" in p and "decode_tokens_per_s" in r]
        if ratios:
            row[f"speedup_vs_{peer}"] = float(np.median(ratios))
        if len(ratios) > 1:
            row[f"speedup_vs_{peer}_runs"] = ratios


def _kv_ratio_and_floor(row: dict, main_dir: Path, baseline_dir: Path, bandwidth: float) -> None:
    prunex, baseline = row.get("prunex", {}), row.get("baseline", {})
    if "decode_tokens_per_s" not in prunex:
        return
    row["baseline_kv_bytes"] = baseline.get("kv_bytes", prunex.get("dense_kv_bytes"))
    if row["baseline_kv_bytes"]:
        row["kv_bytes_ratio"] = row["baseline_kv_bytes"] / prunex["kv_bytes"]
    row["prunex_floor_tokens_per_s"] = _floor_tokens_per_s(row["batch"], step_weight_bytes(main_dir),
                                                           prunex["kv_held_bytes"], bandwidth)
    row["prunex_floor_ratio"] = row["prunex_floor_tokens_per_s"] / row["prunex_tokens_per_s"]  # 1: at the floor
    if "kv_bytes" in baseline:
        row["baseline_floor_tokens_per_s"] = _floor_tokens_per_s(row["batch"], step_weight_bytes(baseline_dir),
                                                                 baseline["kv_bytes"], bandwidth)


def _summary(row: dict) -> str:
    parts = [f"b{row['batch']} ctx{row['context']}:"]
    for label in ENGINES:
        if f"{label}_tokens_per_s" in row:
            parts.append(f"{label} {row[f'{label}_tokens_per_s']:.1f} tok/s")
        elif "error" in row.get(label, {}):
            parts.append(f"{label} failed ({row[label]['error']})")
    for key in (*(f"speedup_vs_{label}" for label in ENGINES[1:]), "kv_bytes_ratio"):
        if key in row:
            runs = row.get(f"{key}_runs")
            each = f" (rounds: {' '.join(f'x{r:.2f}' for r in runs)})" if runs else ""
            parts.append(f"{key} x{row[key]:.2f}{each}")
    if "prunex_floor_ratio" in row:
        parts.append(f"prunex at {row['prunex_floor_ratio']:.2f}x the bandwidth floor's step time")
    return " ".join(parts)


def plot(report: dict, path: Path) -> bool:
    """Bars of decode tokens/s per (batch, context) and engine; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = report["results"]
    labels = [f"b{r['batch']}\nctx{r['context']}" for r in rows]
    engines = [e for e in ENGINES if any(f"{e}_tokens_per_s" in r for r in rows)]
    x = np.arange(len(rows))
    width = 0.8 / max(len(engines), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
    for i, engine in enumerate(engines):
        ax.bar(x + i * width, [r.get(f"{engine}_tokens_per_s", 0) for r in rows], width, label=engine)
    ax.set_xticks(x + width * (len(engines) - 1) / 2, labels)
    ax.set_ylabel("decode tokens/s")
    ax.set_title("prunex bench decode")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
