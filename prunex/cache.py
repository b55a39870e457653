"""Where prunex keeps converted models and other derived files (never in git)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under `$PRUNEX_CACHE` (default `~/.cache/prunex`)."""
    root = Path(os.environ.get("PRUNEX_CACHE", Path.home() / ".cache" / "prunex")).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
