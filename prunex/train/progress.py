"""Progress of a training loop with its latest figures: a rich bar on a terminal, log lines otherwise.

A bar redrawn in place means nothing in a log file (`nohup prunex train ... > log`): there the progress is
logged as a line every `log_every_s` seconds instead, with the steps done, the time left and the figures.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from prunex.console import STDERR

logger = logging.getLogger(__name__)


class TrainProgress:
    """`with TrainProgress(total) as p: p.update({"loss": ..., ...})`: one advance per call."""

    def __init__(self, total: int, enabled: bool = True, log_every_s: float = 60.0, start: int = 0) -> None:
        self.total = total
        self.enabled = enabled
        self.as_lines = enabled and not STDERR.is_terminal
        self.log_every_s = log_every_s
        self.done = self.start = start  # steps done before (a resumed run)
        self.started = self.last_logged = time.monotonic()
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[figures]}"), disable=not enabled or self.as_lines,
            console=STDERR,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, figures="")

    def __enter__(self) -> "TrainProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def update(self, figures: dict[str, float]) -> None:
        """Count one step done, with its figures (loss, accuracy, ...)."""
        self.done += 1
        text = " ".join(f"{k} {v:.3g}" for k, v in figures.items() if k != "step")
        self.progress.update(self.task, advance=1, figures=text)
        now = time.monotonic()
        if self.as_lines and (now - self.last_logged >= self.log_every_s or self.done == self.total):
            self.last_logged = now
            elapsed = now - self.started
            left = elapsed / (self.done - self.start) * (self.total - self.done)
            logger.info("train step %d/%d, %.0f s elapsed, ~%.0f s left (if it runs all steps): %s",
                        self.done, self.total, elapsed, left, text)
