"""A rich progress bar for training loops, showing the latest figures."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from prunex.console import STDERR


class TrainProgress:
    """`with TrainProgress(total) as p: p.update({"loss": ..., ...})`: one advance per call."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[figures]}"), disable=not enabled, console=STDERR,
        )
        self.task = self.progress.add_task("train", total=total, figures="")

    def __enter__(self) -> "TrainProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def update(self, figures: dict[str, float]) -> None:
        text = " ".join(f"{k} {v:.3g}" for k, v in figures.items() if k != "step")
        self.progress.update(self.task, advance=1, figures=text)
