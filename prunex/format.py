"""The exporter/runtime contract: `prunex.json` (the manifest beside `model.onnx`) and the op-domain constants.

Both `prunex.export` and `prunex.runtime` import this module; it imports neither (nor `onnx`).

The runtime reads io names from here (per-layer names are templates such as `past_key.%d`) and never
hard-codes them. Files from a newer format version are refused (`prunex.config.read_json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunex.config import from_dict, read_json, to_dict, write_json
from prunex.errors import PrunexError

# The prunex op domain: custom ops of exported graphs (bodies in prunex.export.ops).
DOMAIN = "prunex"
DOMAIN_VERSION = 1
ONNX_OPSET = 17  # the default standard opset of the function bodies (every op used is unchanged up to 21)
KV_COMPACT = "KVCompact"
THRESHOLD_GATHER = "ThresholdGather"

MANIFEST_FILE = "prunex.json"
MODEL_FILE = "model.onnx"

# Graph io of the decoder step (see prunex.export.step_module): per-layer names are %d templates.
DECODER_GRAPH_VERSION = 2  # 2: read-only past, keep_past + packed new entries out (1: compacted present out)
DECODER_INPUTS = {
    "input_ids": "input_ids", "position_ids": "position_ids", "input_valid": "input_valid",
    "logit_index": "logit_index",
}
DECODER_PAST = {
    "key": "past_key.%d", "value": "past_value.%d", "kint": "past_kint.%d",
    "valid": "past_valid.%d", "positions": "past_pos.%d",
}
DECODER_NEW = {
    "key": "new_key.%d", "value": "new_value.%d", "kint": "new_kint.%d",
    "valid": "new_valid.%d", "positions": "new_pos.%d",
}
KEEP_PAST = "keep_past.%d"  # (B, P) bool: past entries still kept after the step's queries
CACHE_FIELDS = tuple(DECODER_PAST)  # per-layer order of the past inputs and of the new-entry outputs

# Graph io of the encoder (see prunex.export.encoder): input_ids, attention_mask (B, T) int64 ->
# logits (B, C), kept (B, L) tokens present after each layer, positions (B, W) original positions left (-1: pad).
ENCODER_INPUTS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
ENCODER_OUTPUTS = {"logits": "logits", "kept": "kept", "positions": "positions"}


@dataclass
class DecoderManifest:
    """What a runtime needs to drive an exported decoder step graph."""

    kind: str = "decoder"
    graph_version: int = DECODER_GRAPH_VERSION
    method: str = "dcp"  # dcp (KV pruning in the graph) | dense (keep = valid)
    model_file: str = MODEL_FILE
    inputs: dict[str, str] = field(default_factory=lambda: dict(DECODER_INPUTS))
    past: dict[str, str] = field(default_factory=lambda: dict(DECODER_PAST))  # per-layer input templates
    logits: str = "logits"  # (B, K, vocab) at logit_index
    keep_past: str = KEEP_PAST  # per-layer output template
    new: dict[str, str] = field(default_factory=lambda: dict(DECODER_NEW))  # per-layer output templates
    op_domain: str = DOMAIN
    op_domain_version: int = DOMAIN_VERSION
    ops: list[str] = field(default_factory=list)  # prunex ops the graph uses
    num_layers: int = 0
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    interaction_dim: int = 0  # R: width of past_kint (0 for dense)
    vocab_size: int = 0
    max_positions: int | None = None
    dtype: str = "float32"
    quantization: dict[str, Any] = field(default_factory=dict)  # empty: fp32; else mode, source, figures
    opset: int = 17
    eos_token_id: int | None = None
    source: str = ""  # the checkpoint dir or model name exported
    base_model: str = ""  # base model id
    base_model_hash: str = ""  # sha256 of the base weights
    validation: dict[str, Any] = field(default_factory=dict)  # figures of the check against PyTorch

    def name(self, template: str, layer: int) -> str:
        """A per-layer io name from a template of `past` / `new` / `keep_past`."""
        return template % layer

    def output_names(self) -> list[str]:
        """All graph outputs in order: logits, then per layer keep_past and the new entries."""
        per_layer = [self.keep_past, *(self.new[f] for f in CACHE_FIELDS)]
        return [self.logits] + [t % layer for layer in range(self.num_layers) for t in per_layer]


def write_manifest(directory: Path, manifest: "DecoderManifest | EncoderManifest") -> Path:
    """Write `prunex.json` into `directory`; returns its path."""
    path = Path(directory) / MANIFEST_FILE
    write_json(path, to_dict(manifest))
    return path


def is_exported_dir(path: str | Path) -> bool:
    """True when `path` is a folder holding a prunex manifest."""
    return (Path(str(path)) / MANIFEST_FILE).is_file()


def manifest_kind(directory: str | Path) -> str:
    """The `kind` (decoder | encoder) of an exported dir's manifest."""
    return str(read_json(Path(directory) / MANIFEST_FILE, "prunex manifest").get("kind"))


def _read(directory: str | Path, kind: str, cls: type):
    """Read and check a manifest of `kind` (newer format or op versions are refused)."""
    data = read_json(Path(directory) / MANIFEST_FILE, "prunex manifest")
    found = data.get("kind")
    if found != kind:
        raise PrunexError(f"{directory} holds a {found!r} export; this needs a {kind!r} one")
    manifest = from_dict(cls, data)
    if manifest.op_domain != DOMAIN or manifest.op_domain_version > DOMAIN_VERSION:
        raise PrunexError(
            f"{directory} needs op domain {manifest.op_domain} v{manifest.op_domain_version}; this prunex has "
            f"{DOMAIN} v{DOMAIN_VERSION}: upgrade prunex"
        )
    return manifest


def read_manifest(directory: str | Path) -> DecoderManifest:
    """Read and check the manifest of an exported decoder dir (graphs of another layout are refused)."""
    data = read_json(Path(directory) / MANIFEST_FILE, "prunex manifest")
    version = data.get("graph_version", 1)
    if data.get("kind") == "decoder" and version != DECODER_GRAPH_VERSION:
        raise PrunexError(
            f"{directory} holds a decoder graph of layout {version}; this prunex runs layout "
            f"{DECODER_GRAPH_VERSION}: export it again with `prunex export`"
        )
    return _read(directory, "decoder", DecoderManifest)


def read_encoder_manifest(directory: str | Path) -> "EncoderManifest":
    """Read and check the manifest of an exported encoder dir."""
    return _read(directory, "encoder", EncoderManifest)


@dataclass
class EncoderManifest:
    """What a runtime needs to run an exported encoder classifier graph (LTP tokens gathered in the graph)."""

    kind: str = "encoder"
    method: str = "ltp"  # ltp (ThresholdGather between layers) | dense
    model_file: str = MODEL_FILE
    inputs: dict[str, str] = field(default_factory=lambda: dict(ENCODER_INPUTS))
    outputs: dict[str, str] = field(default_factory=lambda: dict(ENCODER_OUTPUTS))
    op_domain: str = DOMAIN
    op_domain_version: int = DOMAIN_VERSION
    ops: list[str] = field(default_factory=list)
    num_layers: int = 0
    num_heads: int = 0
    hidden_size: int = 0
    num_labels: int = 0
    label_names: list[str] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)  # (L,) per-layer thresholds baked into the graph
    max_length: int = 0
    dtype: str = "float32"
    quantization: dict[str, Any] = field(default_factory=dict)
    opset: int = 17
    source: str = ""
    base_model: str = ""
    base_model_hash: str = ""
    validation: dict[str, Any] = field(default_factory=dict)
