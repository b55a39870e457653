"""The command line both peer workers share (`workers.ortgenai`, `workers.llamacpp`): the exported dir whose base
model and tokenizer they use, the peer's precision, the bench shape; one JSON line on stdout."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from prunex.bench.rss import peak_rss_bytes
from prunex.errors import PrunexError

# measure(directory, precision, batch, context, new_tokens, threads) -> figures
Measure = Callable[[str, str, int, int, int, int], dict]


def run_peer(description: str, precisions: tuple[str, ...], measure: Measure) -> None:
    """Parse the worker's arguments, measure, print the figures (with the peak RSS) as one JSON line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dir", required=True, help="the exported dir whose base model and tokenizer to use")
    parser.add_argument("--precision", choices=precisions, default=precisions[0])
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--context", type=int, required=True)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    try:
        result = measure(args.dir, args.precision, args.batch, args.context, args.new_tokens, args.threads)
    except PrunexError as err:
        raise SystemExit(f"error: {err}") from err
    print(json.dumps({**result, "peak_rss_bytes": peak_rss_bytes()}))
