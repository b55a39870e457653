"""Decode tok/s, TTFT and peak RSS against context length, from `prunex bench decode --out` reports.

Usage: python scripts/plot_context_curve.py OUT.png REPORT.json [REPORT.json ...]
Reads every (batch 1, context) row of the reports, prints a markdown table (medians as the bench reports them)
and draws three panels, one line per engine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prunex.bench.decode import ENGINES  # noqa: E402

FIGURES = [("tokens_per_s", "decode tok/s", 1.0), ("time_to_first_token_s", "TTFT (s)", 1.0),
           ("peak_rss_bytes", "peak RSS (GB)", 1e-9)]


def main() -> None:
    out, reports = Path(sys.argv[1]), [json.loads(Path(p).read_text()) for p in sys.argv[2:]]
    rows = sorted((r for report in reports for r in report["results"] if r["batch"] == 1), key=lambda r: r["context"])
    engines = [e for e in ENGINES if any(f"{e}_tokens_per_s" in r for r in rows)]
    print("| context | " + " | ".join(f"{e} tok/s, TTFT, RSS" for e in engines) + " |")
    print("|---" * (len(engines) + 1) + "|")
    for row in rows:
        cells = [f"{row[f'{e}_tokens_per_s']:.1f}, {row[f'{e}_time_to_first_token_s']:.2f} s, "
                 f"{row[f'{e}_peak_rss_bytes'] / 1e9:.2f} GB" if f"{e}_tokens_per_s" in row else "-" for e in engines]
        print(f"| {row['context']} | " + " | ".join(cells) + " |")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (key, label, unit) in zip(axes, FIGURES):
        for engine in engines:
            points = [(r["context"], r[f"{engine}_{key}"] * unit) for r in rows if f"{engine}_{key}" in r]
            ax.plot(*zip(*points), marker="o", label=engine)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens), batch 1")
        ax.set_ylabel(label)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
