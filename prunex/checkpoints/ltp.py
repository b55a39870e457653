"""LTP checkpoints on disk: a pruning checkpoint (`pruning.json` + `pruning.safetensors` with the thresholds)
plus the fine-tuned classifier, since LTP fine-tunes the whole encoder.

Files:
- `pruning.json`: method "ltp", base model id and the hash of its ORIGINAL pretrained encoder weights, the
  LTPConfig, and `training`: stage, task, label names, split seed, max length, train config, figures per stage.
- `pruning.safetensors`: `offset` (L,) learned offsets (units of final_threshold) and `thresholds` (L,).
- `model.safetensors`: the classifier after the checkpoint's stage.
- `dense.safetensors`: the stage-1 (base stage) dense classifier, the reference for `dense_accuracy`
  (absent after the base stage, where `model.safetensors` is that model).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import save_model

from prunex.checkpoints.meta import CheckpointMeta, is_checkpoint, load_checkpoint, save_checkpoint
from prunex.config import LTP_STAGES, LTPConfig, to_dict
from prunex.errors import PrunexError


class LTPThresholdsLike(Protocol):
    """What a checkpoint stores of `prunex.prune.ltp.LTPThresholds`."""

    config: LTPConfig
    offset: torch.Tensor  # (L,)

    def thresholds(self) -> torch.Tensor: ...  # (L,)


class LTPClassifierLike(Protocol):
    """What a checkpoint stores of `prunex.prune.ltp.LTPClassifier`: its encoder and its thresholds."""

    model: torch.nn.Module
    thresholds: LTPThresholdsLike


class BaseModelLike(Protocol):
    """The base model a checkpoint is tied to (`prunex.models.encoders.LoadedClassifier`)."""

    model_id: str
    weights_hash: str


MODEL_FILE = "model.safetensors"
DENSE_FILE = "dense.safetensors"
REQUIRED_TRAINING_FIELDS = ("stage", "task", "label_names", "split_seed", "max_length")


def save_ltp(
    out_dir: str | Path,
    classifier: LTPClassifierLike,
    base: BaseModelLike,
    training: dict[str, Any],
    dense_weights: Path | None,
) -> CheckpointMeta:
    """Write an LTP checkpoint. `training` must hold stage, task, label_names, split_seed and max_length.

    dense_weights: the file of the stage-1 classifier, copied in as `dense.safetensors` (None after the
    base stage, whose `model.safetensors` is that model).
    """
    missing = [key for key in REQUIRED_TRAINING_FIELDS if key not in training]
    if missing:
        raise PrunexError(f"LTP checkpoint metadata lacks {missing}")
    meta = CheckpointMeta(
        method="ltp", base_model=base.model_id, base_model_hash=base.weights_hash,
        config=to_dict(classifier.thresholds.config), training=training,
    )
    thresholds = classifier.thresholds
    out = save_checkpoint(
        out_dir, meta, {"offset": thresholds.offset.detach(), "thresholds": thresholds.thresholds().detach()}
    )
    save_model(classifier.model, str(out / MODEL_FILE))
    if dense_weights is not None and Path(dense_weights).resolve() != (out / DENSE_FILE).resolve():
        shutil.copyfile(dense_weights, out / DENSE_FILE)
    return meta


def read_ltp_meta(path: str | Path) -> CheckpointMeta:
    """The metadata of an LTP checkpoint, or a clear error for anything else."""
    if not is_checkpoint(path):
        raise PrunexError(
            f"{path} is not an LTP checkpoint (no pruning.json): train one with `prunex train ltp`"
        )
    meta, _ = load_checkpoint(path)
    if meta.method != "ltp":
        raise PrunexError(f"{path} is a {meta.method!r} checkpoint; an encoder classifier needs an 'ltp' one")
    missing = [key for key in REQUIRED_TRAINING_FIELDS if key not in meta.training]
    if missing or meta.training["stage"] not in LTP_STAGES:
        raise PrunexError(f"{path}/pruning.json lacks LTP training fields {missing or ['stage']}")
    return meta


def dense_weights_file(path: str | Path) -> Path:
    """The stage-1 dense classifier of a checkpoint (`model.safetensors` of a base-stage checkpoint)."""
    folder = Path(path)
    return folder / DENSE_FILE if (folder / DENSE_FILE).is_file() else folder / MODEL_FILE
