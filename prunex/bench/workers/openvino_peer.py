"""The OpenVINO GenAI peer: one decode measurement with its ContinuousBatchingPipeline, optionally with its own
training-free K/V eviction.

openvino-genai's converter (optimum-intel) needs transformers < 5.6, so this file runs under the Python of an
environment of its own (`scripts/openvino_env.sh`) and imports nothing from prunex (it is run by path):
`OPENVINO_PYTHON workers/openvino_peer.py --model HF_DIR --export DIR --weights int8|fp32 --prompts prompts.json
--new-tokens N --threads T [--max-cache TOKENS]` prints one JSON line like `workers.decode`.

- The model is converted once (`optimum-cli export openvino --weight-format int8|fp32`) into --export.
- Every row is added as token ids before the first `step()`, with split-fuse off and a batched-token limit of
  B x C, so the first step prefills every row (TTFT) and each later step decodes one token a row.
- Compute and K/V precision are the engine's defaults for this CPU (bf16 compute and a u8 K/V cache where the
  CPU has AMX / AVX-512 bf16): what a user of it gets.
- --max-cache N turns on its `CacheEvictionConfig`: the first 32 and the last 64 tokens kept, at most N tokens a
  row (a multiple of its 32-token block), evicted by accumulated attention (NORM_SUM).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # prunex/bench: rss.py, standard library only
from rss import peak_rss_bytes  # noqa: E402

BLOCK = 32  # OpenVINO GenAI's K/V block: eviction sizes are multiples of it
START, RECENT = 32, 64  # tokens its eviction always keeps at the start and the end


def converted(model: str, export: Path, weights: str) -> Path:
    """The OpenVINO IR of `model` with `weights` (int8 | fp32), converted once into `export`."""
    if not (export / "openvino_model.xml").is_file():
        command = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino", "-m", model,
                   "--task", "text-generation-with-past", "--weight-format", weights, str(export)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"error: optimum-intel's export failed: {done.stderr.strip()[-500:]}")
    return export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="Hugging Face model dir (the base model)")
    parser.add_argument("--export", required=True, help="Where the OpenVINO conversion is cached")
    parser.add_argument("--weights", choices=("int8", "fp32"), default="int8")
    parser.add_argument("--prompts", required=True, help="JSON file: a list of equal-length token id lists")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-cache", type=int, default=0, help="Tokens a row keeps with eviction (0: none)")
    args = parser.parse_args()

    import numpy as np
    import openvino as ov
    import openvino_genai as genai

    model_dir = converted(args.model, Path(args.export), args.weights)
    prompts = json.loads(Path(args.prompts).read_text())  # B lists of C ids
    batch, context = len(prompts), len(prompts[0])
    scheduler = genai.SchedulerConfig()
    scheduler.dynamic_split_fuse = False
    scheduler.max_num_batched_tokens = batch * context
    scheduler.max_num_seqs = batch
    scheduler.cache_size = max(1, -(-batch * (context + args.new_tokens) * 200_000 // 2**30))  # GB, generous
    max_cache = 0
    if args.max_cache:
        max_cache = max(START + RECENT + BLOCK, -(-args.max_cache // BLOCK) * BLOCK)
        scheduler.use_cache_eviction = True
        scheduler.cache_eviction_config = genai.CacheEvictionConfig(
            start_size=START, recent_size=RECENT, max_cache_size=max_cache,
            aggregation_mode=genai.AggregationMode.NORM_SUM)
    pipe = genai.ContinuousBatchingPipeline(str(model_dir), scheduler, "CPU",
                                            {"INFERENCE_NUM_THREADS": args.threads})
    config = genai.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = args.new_tokens
    config.ignore_eos = True
    config.do_sample = False
    started = time.perf_counter()
    handles = [pipe.add_request(i, ov.Tensor(np.array([ids], dtype=np.int64)), config)
               for i, ids in enumerate(prompts)]
    stamps = []
    while pipe.has_non_finished_requests():
        pipe.step()
        stamps.append(time.perf_counter())
    first_row = handles[0].read_all()[0].generated_ids
    steps = len(stamps) - 1
    print(json.dumps({
        "time_to_first_token_s": stamps[0] - started,
        "decode_tokens_per_s": batch * steps / (stamps[-1] - stamps[0]),
        "first_tokens": list(first_row[:8]),
        "max_cache_tokens": max_cache,
        "peak_rss_bytes": peak_rss_bytes(),
    }))


if __name__ == "__main__":
    main()
