"""Writing an export folder all at once: build it in a temp folder beside `out`, rename on success."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, TypeVar

from prunex.errors import PrunexError

T = TypeVar("T")


def prepare_out(out: Path, force: bool, clear: bool = False) -> None:
    """Refuse an existing non-empty `out` (a file, or a folder unless `force`); with `force` and `clear`, empty
    it now (for writers that fill `out` in place rather than through `write_atomically`)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrunexError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise PrunexError(f"{out} exists and is not empty: choose another --out or pass --force")
        if clear:
            shutil.rmtree(out)


def write_atomically(out: Path, fill: Callable[[Path], T]) -> T:
    """Run `fill(tmp)` on a fresh temp folder next to `out`, then replace `out` with it.

    Any failure (validation included) removes the temp folder and leaves `out` as it was.
    """
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        result = fill(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
