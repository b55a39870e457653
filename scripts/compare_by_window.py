"""Run `prunex eval compare` a few windows at a time (--chunk), appending each chunk's report to a JSONL file, so
a long measurement on a slow machine leaves usable figures at any point; `--aggregate` merges the lines done so
far (every window has the same token count: perplexity = exp of the window-weighted mean log ppl, kept = the
window-weighted mean kept).

    python scripts/compare_by_window.py --out compare.jsonl [--windows 16] [--context 1024]
    python scripts/compare_by_window.py --out compare.jsonl --aggregate [--plot compare.png]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def aggregate(lines: list[dict]) -> dict:
    """Merge per-window reports of `CompareReport.to_dict()` into one of the same shape."""
    weights = [r["windows"] for r in lines]
    total = sum(weights)

    def mean(values) -> float:
        return sum(w * v for w, v in zip(weights, values)) / total

    dense = math.exp(mean(math.log(r["dense_perplexity"]) for r in lines))
    rows = []
    for i, first in enumerate(lines[0]["results"]):
        same = [r["results"][i] for r in lines]
        ppl = math.exp(mean(math.log(s["perplexity"]) for s in same))
        rows.append({**first, "kv_kept": mean(s["kv_kept"] for s in same), "perplexity": ppl,
                     "ratio_to_dense": ppl / dense})
    return {**lines[0], "results": rows, "dense_perplexity": dense, "windows": total}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--budgets", default="0.1,0.25,0.5")
    parser.add_argument("--chunk", type=int, default=4, help="windows per line (and per forward)")
    parser.add_argument("--aggregate", action="store_true")
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    if args.aggregate:
        from prunex.eval.compare import CompareReport, CompareRow, plot_comparison

        merged = aggregate([json.loads(line) for line in args.out.read_text().splitlines() if line.strip()])
        print(json.dumps(merged, indent=1))
        if args.plot:
            rows = [CompareRow(**r) for r in merged["results"]]
            plot_comparison(CompareReport(rows, merged["dense_perplexity"], merged["windows"], merged["context"]),
                            args.plot)
        return
    from prunex.data.text import split_text, token_windows
    from prunex.eval.compare import compare_policies
    from prunex.loading import load_lm

    lm = load_lm(None)
    windows = token_windows(lm.tokenizer, split_text("wikipedia", "test"), args.context, args.windows)
    budgets = [float(b) for b in args.budgets.split(",")]
    lines = args.out.read_text().splitlines() if args.out.exists() else []
    start = sum(json.loads(line)["windows"] for line in lines if line.strip())
    for index in range(start, windows.shape[0], args.chunk):
        chunk = windows[index:index + args.chunk]
        report = compare_policies(lm, chunk, budgets, show_progress=False, batch_size=args.chunk)
        with args.out.open("a") as handle:
            handle.write(json.dumps(report.to_dict()) + "\n")
        print(f"windows {index + 1}-{index + chunk.shape[0]} of {windows.shape[0]} done", flush=True)


if __name__ == "__main__":
    main()
