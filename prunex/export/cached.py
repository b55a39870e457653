"""Exports made on demand and kept under `$PRUNEX_CACHE/exports`, for commands that take a checkpoint or a
model name where they run an exported graph (`prunex bench decode`, `prunex serve`)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import prunex
from prunex.cache import cache_dir
from prunex.export.decoder import export_decoder
from prunex.format import DECODER_GRAPH_VERSION, is_exported_dir
from prunex.loading import DEFAULT_CHECKPOINT, load_lm

logger = logging.getLogger(__name__)


def cached_export(source: str | None, dense: bool, attention_scores: bool = False) -> Path:
    """An exported dir of `source` (checkpoint, model name, None: built-in), cached under PRUNEX_CACHE; with
    the attention probabilities as outputs when `attention_scores`."""
    path = Path(source or DEFAULT_CHECKPOINT)
    digest = hashlib.sha256(f"{path.resolve()}|{DECODER_GRAPH_VERSION}|{dense}|{attention_scores}".encode())
    for file in sorted(path.glob("*")) if path.is_dir() else []:
        digest.update(file.name.encode() + str(file.stat().st_size).encode() + str(file.stat().st_mtime).encode())
    package = Path(prunex.__file__).parent
    for code in sorted([*(package / "export").glob("*.py"), *(package / "prune").glob("*.py")]):
        digest.update(code.read_bytes())  # a changed exporter or layer loop gives a new cached export
    out = cache_dir("exports") / f"{path.name}-{'dense' if dense else 'pruned'}-{digest.hexdigest()[:12]}"
    if not is_exported_dir(out):
        logger.info("exporting %s (%s) to %s ...", path, "dense" if dense else "pruned", out)
        export_decoder(load_lm(source), out, dense=dense, force=True, source=str(path),
                       attention_scores=attention_scores)
    return out
