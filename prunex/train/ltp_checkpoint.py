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
from typing import Any

from safetensors.torch import load_model, save_model

from prunex.config import from_dict, to_dict
from prunex.errors import PrunexError
from prunex.models.encoders import LoadedClassifier, load_classifier
from prunex.prune.ltp import STAGES, LTPClassifier, LTPConfig, LTPThresholds
from prunex.train.checkpoint import (
    CheckpointMeta,
    check_base,
    is_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

MODEL_FILE = "model.safetensors"
DENSE_FILE = "dense.safetensors"
_REQUIRED = ("stage", "task", "label_names", "split_seed", "max_length")


def save_ltp(
    out_dir: str | Path,
    classifier: LTPClassifier,
    base: LoadedClassifier,
    training: dict[str, Any],
    dense_weights: Path | None,
) -> CheckpointMeta:
    """Write an LTP checkpoint. `training` must hold stage, task, label_names, split_seed and max_length.

    dense_weights: the file of the stage-1 classifier, copied in as `dense.safetensors` (None after the
    base stage, whose `model.safetensors` is that model).
    """
    missing = [key for key in _REQUIRED if key not in training]
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
            f"{path} is not an LTP checkpoint (no pruning.json): train one with `prunex train --method ltp`"
        )
    meta, _ = load_checkpoint(path)
    if meta.method != "ltp":
        raise PrunexError(f"{path} is a {meta.method!r} checkpoint; an encoder classifier needs an 'ltp' one")
    missing = [key for key in _REQUIRED if key not in meta.training]
    if missing or meta.training["stage"] not in STAGES:
        raise PrunexError(f"{path}/pruning.json lacks LTP training fields {missing or ['stage']}")
    return meta


def dense_weights_file(path: str | Path) -> Path:
    """The stage-1 dense classifier of a checkpoint (`model.safetensors` of a base-stage checkpoint)."""
    folder = Path(path)
    return folder / DENSE_FILE if (folder / DENSE_FILE).is_file() else folder / MODEL_FILE


def load_ltp(path: str | Path, *, dense: bool = False) -> tuple[LTPClassifier, LoadedClassifier]:
    """Rebuild a checkpoint's classifier (its base model is loaded and its hash verified).

    dense=True loads the stage-1 dense classifier instead, with pruning off. Returns the classifier and the
    loaded base (its id and hash are what a continued stage records).
    """
    folder = Path(path)
    meta = read_ltp_meta(folder)
    _, tensors = load_checkpoint(folder)
    training = meta.training
    base = load_classifier(meta.base_model, len(training["label_names"]))
    check_base(meta, base.model_id, base.weights_hash)
    weights = dense_weights_file(folder) if dense else folder / MODEL_FILE
    if not weights.is_file():
        raise PrunexError(f"{folder} has no {weights.name}: the checkpoint is incomplete, train it again")
    try:
        load_model(base.model, str(weights))
    except RuntimeError as err:
        raise PrunexError(f"{weights} does not fit the {meta.base_model!r} classifier: {err}") from err
    thresholds = LTPThresholds(base.model.config.num_hidden_layers, from_dict(LTPConfig, meta.config))
    try:
        thresholds.load_state_dict({"offset": tensors["offset"]})
    except (KeyError, RuntimeError) as err:
        raise PrunexError(f"{folder} thresholds do not fit this model's layers: {err}") from err
    info = {key: training[key] for key in _REQUIRED if key not in ("stage", "label_names")}
    info["checkpoint"] = str(folder)
    classifier = LTPClassifier(
        base.model, thresholds, tokenizer=base.tokenizer, stage="base" if dense else training["stage"],
        label_names=list(training["label_names"]), info=info,
    )
    classifier.eval()
    return classifier, base
