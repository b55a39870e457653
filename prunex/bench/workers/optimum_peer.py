"""The Optimum peer: one decode measurement with Optimum's ONNX Runtime model (ORTModelForCausalLM).

optimum-onnx pins transformers<4.58, so this file runs under the Python of an environment of its own and
imports nothing from prunex (it is run by path): `OPTIMUM_PYTHON workers/optimum_peer.py --model HF_DIR --export DIR
--prompts prompts.json --new-tokens N --threads T` prints one JSON line like `workers.decode`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # prunex/bench: rss.py, standard library only
from rss import peak_rss_bytes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="Hugging Face model dir (the base model)")
    parser.add_argument("--export", required=True, help="Where Optimum's export is cached")
    parser.add_argument("--prompts", required=True, help="JSON file: a list of equal-length token id lists")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import LogitsProcessor, LogitsProcessorList

    torch.set_num_threads(args.threads)
    export = Path(args.export)
    if not (export / "model.onnx").is_file():
        main_export(args.model, output=export, task="text-generation-with-past", no_post_process=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    model = ORTModelForCausalLM.from_pretrained(export, session_options=options, provider="CPUExecutionProvider")
    prompts = torch.tensor(json.loads(Path(args.prompts).read_text()))  # (B, C)
    stamps: list[float] = []

    class Stamp(LogitsProcessor):
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return scores

    started = time.perf_counter()
    out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=args.new_tokens,
                         min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0,
                         logits_processor=LogitsProcessorList([Stamp()]))
    batch, context = prompts.shape
    print(json.dumps({
        "time_to_first_token_s": stamps[0] - started,
        "decode_tokens_per_s": batch * (len(stamps) - 1) / (stamps[-1] - stamps[0]),
        "first_tokens": out[0, context: context + 8].tolist(),
        "peak_rss_bytes": peak_rss_bytes(),
    }))


if __name__ == "__main__":
    main()
