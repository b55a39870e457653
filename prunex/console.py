"""Where prunex talks to people: logging and progress bars go to stderr, so stdout stays for results
(a `--json` command prints exactly one JSON document there)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import track

T = TypeVar("T")

STDERR = Console(stderr=True)


def progress(items: Iterable[T], description: str, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """A transient rich progress bar on stderr over `items`."""
    yield from track(items, description=description, total=total, disable=not enabled, transient=True,
                     console=STDERR)


def configure_cli_logging(level: int = logging.INFO) -> None:
    """Send the `prunex` loggers' records to stderr as `prunex: message` (the CLI calls this once)."""
    logger = logging.getLogger("prunex")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("prunex: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
