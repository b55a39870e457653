"""Turn a SOURCE (pruning checkpoint dir, model name, or nothing) into a ready model: `load_lm` (decoders,
DCP or a learned K/V scorer) and `load_ltp` (encoder classifiers, LTP). Checkpoint files are read by
`prunex.checkpoints`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import safetensors.torch

from prunex.checkpoints.ltp import MODEL_FILE, REQUIRED_TRAINING_FIELDS, dense_weights_file, read_ltp_meta
from prunex.checkpoints.meta import check_base, is_checkpoint, load_checkpoint
from prunex.config import LTPConfig, ScorerConfig, from_dict
from prunex.errors import PrunexError
from prunex.format import is_exported_dir, manifest_kind
from prunex.models.encoders import LoadedClassifier, load_classifier
from prunex.models.sources import load_model
from prunex.prune.budget import tokens_for_kept_fraction
from prunex.prune.dcp import DCPPolicy
from prunex.prune.lm import PrunedLM
from prunex.prune.ltp import LTPClassifier, LTPThresholds
from prunex.prune.scorer import ScorerPolicy

# The shipped DCP checkpoint for the packaged SmolLM2 (see docs/decoders.md: "The built-in default").
DEFAULT_CHECKPOINT = Path(__file__).parent / "defaults" / "smollm2-dcp"
BASE_WEIGHTS_FILE = "base.safetensors"  # only in checkpoints trained with --train all


@dataclass(frozen=True)
class Source:
    """What a SOURCE argument names."""

    kind: str  # "exported" (prunex export dir) | "checkpoint" (pruning checkpoint dir) | "model" (name or HF dir)
    path: str  # the dir or model name; the built-in checkpoint when none was given
    method: str  # exported: "decoder" | "encoder"; checkpoint: "dcp" | "ltp"; model: ""


def resolve_source(source: str | Path | None) -> Source:
    """Classify a SOURCE: an exported dir, a pruning checkpoint (None: the built-in one) or a model."""
    if source is None:
        return Source("checkpoint", str(default_checkpoint()), "dcp")
    if is_exported_dir(source):
        return Source("exported", str(source), manifest_kind(source))
    if is_checkpoint(source):
        return Source("checkpoint", str(source), load_checkpoint(source)[0].method)
    return Source("model", str(source), "")


def default_checkpoint() -> Path:
    """The built-in DCP checkpoint, or a clear error when this install lacks it."""
    if not is_checkpoint(DEFAULT_CHECKPOINT):
        raise PrunexError(f"the built-in checkpoint is missing from {DEFAULT_CHECKPOINT}; reinstall prunex")
    return DEFAULT_CHECKPOINT


def policy_from_checkpoint(path: str | Path, lm_base) -> DCPPolicy | ScorerPolicy:
    """Build the learned policy of checkpoint `path` (DCP heads or a K/V scorer) for an already loaded base
    model (hash checked)."""
    meta, tensors = load_checkpoint(path)
    if meta.method not in ("dcp", "scorer"):
        raise PrunexError(f"{path} is a {meta.method!r} checkpoint; a decoder needs a 'dcp' or 'scorer' one")
    base_weights = Path(path) / BASE_WEIGHTS_FILE
    check_base(meta, lm_base.model_id, lm_base.weights_hash)
    if base_weights.is_file():
        lm_base.model.load_state_dict(safetensors.torch.load_file(str(base_weights)), strict=False)
    config = lm_base.model.config
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    if meta.method == "scorer":
        scorer = from_dict(ScorerConfig, meta.config)
        policy = ScorerPolicy(config.num_hidden_layers, hidden, config.num_key_value_heads, scorer,
                              tokens_for_kept_fraction(scorer.kv_budget, scorer.context))
    else:
        policy = DCPPolicy(config.num_hidden_layers, hidden, meta.dcp_config())
    try:
        policy.load_state_dict(tensors)
    except RuntimeError as err:
        raise PrunexError(f"{path} does not fit this model's layers: {err}") from err
    policy.eval()
    return policy


def load_lm(source: str | Path | None = None) -> PrunedLM:
    """A pruned LM from a checkpoint dir (its base model is loaded and verified), or a dense model by name.

    `source=None` is the built-in default: SmolLM2-135M with its shipped DCP heads.
    """
    source = default_checkpoint() if source is None else source
    if is_checkpoint(source):
        meta, _ = load_checkpoint(source)
        base = load_model(meta.base_model)
        policy = policy_from_checkpoint(source, base)
        return PrunedLM(base, policy)
    if Path(str(source)).is_dir() and not (Path(str(source)) / "config.json").is_file():
        raise PrunexError(f"{source} is neither a pruning checkpoint (pruning.json) nor a model dir (config.json)")
    return PrunedLM(load_model(str(source)), None)


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
        safetensors.torch.load_model(base.model, str(weights))
    except RuntimeError as err:
        raise PrunexError(f"{weights} does not fit the {meta.base_model!r} classifier: {err}") from err
    thresholds = LTPThresholds(base.model.config.num_hidden_layers, from_dict(LTPConfig, meta.config))
    try:
        thresholds.load_state_dict({"offset": tensors["offset"]})
    except (KeyError, RuntimeError) as err:
        raise PrunexError(f"{folder} thresholds do not fit this model's layers: {err}") from err
    info = {key: training[key] for key in REQUIRED_TRAINING_FIELDS if key not in ("stage", "label_names")}
    info["checkpoint"] = str(folder)
    classifier = LTPClassifier(
        base.model, thresholds, tokenizer=base.tokenizer, stage="base" if dense else training["stage"],
        label_names=list(training["label_names"]), info=info,
    )
    classifier.eval()
    return classifier, base
