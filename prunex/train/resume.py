"""Training that survives the end of a session: the loop's state saved in --out now and then, `--resume` goes on.

A trainer hands `TrainState.save` everything its loop needs to continue (weights, optimizer and scheduler
state, the step, the figures so far); the file also gets the RNG state (dropout) and the settings the run was
started with. It is written atomically (a crash while saving leaves the previous state) every `every_s`
seconds and whenever the trainer reaches a milestone, and removed once the checkpoint is complete. Resuming
with other settings is refused, since the result would mix two runs; threads and device may change.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from prunex.errors import PrunexError

STATE_FILE = "train-state.pt"
FREE_SETTINGS = ("threads", "device", "save_every")  # settings a resumed run may change

logger = logging.getLogger(__name__)


class TrainState:
    """The resumable state of one training run in `out_dir`, for settings `settings` (a config's dict)."""

    def __init__(self, out_dir: str | Path, settings: dict[str, Any], every_s: float = 300.0) -> None:
        self.path = Path(out_dir) / STATE_FILE
        self.settings = {k: v for k, v in settings.items() if k not in FREE_SETTINGS}
        self.every_s = every_s
        self.last_saved = time.monotonic()

    def load(self) -> dict[str, Any] | None:
        """The saved state (None when there is none); refuses one saved with other settings."""
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("settings") != self.settings:
            changed = sorted(k for k in {*self.settings, *state.get("settings", {})}
                             if self.settings.get(k) != state.get("settings", {}).get(k))
            raise PrunexError(
                f"{self.path} was saved by a run with other settings ({', '.join(changed)} differ): resume with "
                "the same options, or pass --force instead of --resume to start over"
            )
        logger.info("resuming from %s (%s)", self.path, state.get("where", "saved state"))
        return state

    @staticmethod
    def restore_rng(state: dict[str, Any]) -> None:
        """Set torch's RNG (dropout) where it was when `state` was saved: call it once the model is loaded
        (a fresh classification head draws from it) and just before the loop goes on."""
        torch.set_rng_state(state["rng"])

    def due(self) -> bool:
        """True when `every_s` seconds have passed since the last save."""
        return time.monotonic() - self.last_saved >= self.every_s

    def save(self, state: dict[str, Any], where: str) -> None:
        """Write `state` (tensors, optimizer state dicts, plain values) atomically; `where` names the point
        reached, for the log and the resume message."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{STATE_FILE}.tmp-{os.getpid()}")
        torch.save({**state, "settings": self.settings, "rng": torch.get_rng_state(), "where": where}, tmp)
        os.replace(tmp, self.path)
        self.last_saved = time.monotonic()
        logger.info("saved the training state at %s (continue with --resume)", where)

    def finish(self) -> None:
        """The run is complete: its checkpoint is written, the state is no longer needed."""
        self.path.unlink(missing_ok=True)
