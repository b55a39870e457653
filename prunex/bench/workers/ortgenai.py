"""The onnxruntime-genai peer of `prunex bench decode`, in a process of its own: `python -m
prunex.bench.workers.ortgenai --dir D --precision fp32|int8|int4 --batch B --context C --new-tokens N
--threads T`; prints one JSON line with the fields of `workers.decode`.

onnxruntime-genai is the dense engine a user of ONNX Runtime would pick instead of prunex: its model builder
turns the exported dir's base model (a Hugging Face dir) into a fused graph (GroupQueryAttention with RoPE,
packed QKV, SkipSimplifiedLayerNorm, MatMulNBits for int8/int4), built once and cached under
`$PRUNEX_CACHE/ortgenai`. Same prompts as `workers.decode` (the first B windows of C held-out Wikipedia tokens),
greedy, N tokens a row. Its `--help` is not used (it crashes on a bare `%`, see FACTS); the options are the
builder's documented ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from prunex.bench.workers.decode import bench_prompts
from prunex.bench.workers.peer_cli import run_peer
from prunex.cache import cache_dir
from prunex.errors import PrunexError
from prunex.tensors import kv_entry_bytes

PRECISIONS = ("fp32", "int8", "int4")


def built_model(base_model: str, precision: str) -> Path:
    """The onnxruntime-genai model of `base_model` at `precision`, built by its model builder once."""
    from prunex.models.sources import hf_model_dir

    source = hf_model_dir(base_model)
    out = cache_dir("ortgenai") / f"{Path(base_model).name}-{precision}"
    if not (out / "genai_config.json").is_file():
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(source), "-i", str(source),
                   "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(cache_dir("ortgenai", "build"))]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise PrunexError(f"onnxruntime-genai's builder failed on {source}: {done.stderr.strip()[-500:]}")
    return out


def set_threads(model_dir: Path, threads: int) -> None:
    """Pin the model's intra-op threads in its genai_config.json (the way onnxruntime-genai takes them)."""
    path = model_dir / "genai_config.json"
    config = json.loads(path.read_text())
    config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    path.write_text(json.dumps(config, indent=2))


def measure(directory: str, precision: str, batch: int, context: int, new_tokens: int, threads: int) -> dict:
    """Greedy decode of the bench prompts: time to the first token of every row, then tokens/s of the rest."""
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    from prunex.format import read_manifest

    manifest = read_manifest(directory)
    model_dir = built_model(manifest.base_model, precision)
    set_threads(model_dir, threads)
    prompts = np.array(bench_prompts(AutoTokenizer.from_pretrained(directory), batch, context), dtype=np.int32)
    model = og.Model(str(model_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=context + new_tokens, batch_size=batch)
    generator = og.Generator(model, params)
    started = time.perf_counter()
    generator.append_tokens(prompts)  # (B, C): the prefill of every row
    generator.generate_next_token()
    stamps = [time.perf_counter()]
    first_row = [int(generator.get_next_tokens()[0])]
    while len(stamps) < new_tokens and not generator.is_done():
        generator.generate_next_token()
        stamps.append(time.perf_counter())
        first_row.append(int(generator.get_next_tokens()[0]))
    steps = len(stamps) - 1
    per_token = kv_entry_bytes(manifest.num_kv_heads, manifest.head_dim)
    dense = batch * (context + new_tokens - 1) * manifest.num_layers * per_token
    return {
        "time_to_first_token_s": stamps[0] - started, "decode_tokens_per_s": batch * steps / (stamps[-1] - stamps[0]),
        "kv_bytes": dense, "dense_kv_bytes": dense, "first_tokens": first_row[:8], "precision": precision,
        "device": "cpu",
    }


if __name__ == "__main__":
    run_peer(__doc__, PRECISIONS, measure)
