"""Turn a SOURCE (pruning checkpoint dir, model name, or nothing) into a ready PrunedLM."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from prunex.errors import PrunexError
from prunex.models.sources import load_model
from prunex.prune.dcp import DCPPolicy
from prunex.prune.lm import PrunedLM
from prunex.train.checkpoint import check_base, is_checkpoint, load_checkpoint

# The shipped DCP checkpoint for the packaged SmolLM2 (see README: "The built-in default").
DEFAULT_CHECKPOINT = Path(__file__).parent / "defaults" / "smollm2-dcp"
BASE_WEIGHTS_FILE = "base.safetensors"  # only in checkpoints trained with --train all


def default_checkpoint() -> Path:
    """The built-in DCP checkpoint, or a clear error when this install lacks it."""
    if not is_checkpoint(DEFAULT_CHECKPOINT):
        raise PrunexError(f"the built-in checkpoint is missing from {DEFAULT_CHECKPOINT}; reinstall prunex")
    return DEFAULT_CHECKPOINT


def policy_from_checkpoint(path: str | Path, lm_base) -> DCPPolicy:
    """Build the DCP policy of checkpoint `path` for an already loaded base model (hash checked)."""
    meta, tensors = load_checkpoint(path)
    if meta.method != "dcp":
        raise PrunexError(f"{path} is a {meta.method!r} checkpoint; a decoder needs a 'dcp' one")
    base_weights = Path(path) / BASE_WEIGHTS_FILE
    check_base(meta, lm_base.model_id, lm_base.weights_hash)
    if base_weights.is_file():
        lm_base.model.load_state_dict(load_file(str(base_weights)), strict=False)
    config = lm_base.model.config
    hidden = getattr(config, "hidden_size", None) or config.n_embd
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


def cached_export(source: str | None, dense: bool) -> Path:
    """An exported dir of `source` (checkpoint, model name, None: built-in), exported once and cached under
    PRUNEX_CACHE (`prunex bench decode` and `prunex serve` share it)."""
    import hashlib
    import sys

    import prunex.export
    from prunex.cache import cache_dir
    from prunex.export.decoder import export_decoder
    from prunex.export.manifest import DECODER_GRAPH_VERSION, is_exported_dir

    path = Path(source or DEFAULT_CHECKPOINT)
    digest = hashlib.sha256(f"{path.resolve()}|{DECODER_GRAPH_VERSION}|{dense}".encode())
    for file in sorted(path.glob("*")) if path.is_dir() else []:
        digest.update(file.name.encode() + str(file.stat().st_size).encode() + str(file.stat().st_mtime).encode())
    for code in sorted(Path(prunex.export.__file__).parent.glob("*.py")):  # a changed exporter (e.g. a new
        digest.update(code.read_bytes())  # op body) gives a new cached export
    out = cache_dir("exports") / f"{path.name}-{'dense' if dense else 'pruned'}-{digest.hexdigest()[:12]}"
    if not is_exported_dir(out):
        print(f"exporting {path} ({'dense' if dense else 'pruned'}) to {out} ...", file=sys.stderr)
        export_decoder(load_lm(source), out, dense=dense, force=True, source=str(path))
    return out
