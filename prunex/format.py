"""The exporter/runtime contract: `prunex.json` (the manifest beside `model.onnx`) and the op-domain constants.

Both `prunex.export` and `prunex.runtime` import this module; it imports neither (nor `onnx`).

The runtime reads io names from here (per-layer names are templates such as `past_key.%d`) and never
hard-codes them. Files from a newer format version are refused (`prunex.config.read_json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunex.config import from_dict, read_json, to_dict, write_json
from prunex.errors import PrunexError

# The prunex op domain: custom ops of exported graphs (bodies in prunex.export.ops).
DOMAIN = "prunex"
DOMAIN_VERSION = 1
ONNX_OPSET = 17  # the default standard opset of the function bodies (every op used is unchanged up to 21)
THRESHOLD_GATHER = "ThresholdGather"

MANIFEST_FILE = "prunex.json"
MODEL_FILE = "model.onnx"

# Graph io of the decoder (see prunex.export.decoder_graph): per-layer names are %d templates.
DECODER_GRAPH_VERSION = 4  # 4: fused, a slot capacity per layer; 3: fused, one capacity for all; 2: traced step
DECODER_INPUTS = {"input_ids": "input_ids", "position_ids": "position_ids", "logit_index": "logit_index"}
DECODER_PAST = {  # per layer; W: the layer's slot capacity (each layer has its own)
    "key": "past_key.%d", "value": "past_value.%d",  # (B, KV, W, D), shared with present_key / present_value
    "kint": "past_kint.%d",  # (B, R, W) interaction keys (DCP only)
    "valid": "past_valid.%d",  # (B, 1, W) bool: slot holds a kept entry or one of the step's new entries
    "guard": "past_guard.%d",  # (B, 1, W) int64: first query position that may drop the entry (DCP only)
    "positions": "past_positions.%d",  # (B, 1, W) int64: the entry's logical position (sliding-window models)
    "seqlens": "seqlens.%d",  # (B,) int32: slots in use after the step, minus 1; new entries at the end
    "capacity": "capacity.%d",  # () int32: W, the attention's total length
}
NEVER = 2**62  # the guard of an entry no query may drop (attention sinks)
DECODER_PRESENT = {"key": "present_key.%d", "value": "present_value.%d"}  # the past buffers, written in place
KEEP = "keep.%d"  # (B, S, W) bool: validity after each query of the step, the last is the cache's (DCP only)
NEW_KINT = "new_kint.%d"  # (B, S, R) the new entries' interaction keys (DCP only), for the runtime to store
ATTENTION = "attention.%d"  # (B, H, S, W) each query's attention probabilities (exported with attention scores)
CACHE_FIELDS = tuple(DECODER_PAST)
KV_CACHE_TYPES = ("float32", "int8")  # the K/V slot buffers' types (int8: GroupQueryAttention's quantized cache)

# Graph io of the encoder (see prunex.export.encoder): input_ids, attention_mask (B, T) int64 ->
# logits (B, C), kept (B, L) tokens present after each layer, positions (B, W) original positions left (-1: pad).
ENCODER_INPUTS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
ENCODER_OUTPUTS = {"logits": "logits", "kept": "kept", "positions": "positions"}


@dataclass
class DecoderManifest:
    """What a runtime needs to drive an exported decoder graph."""

    kind: str = "decoder"
    graph_version: int = DECODER_GRAPH_VERSION
    method: str = "dcp"  # dcp (KV pruning in the graph) | dense (keep = valid)
    model_file: str = MODEL_FILE
    inputs: dict[str, str] = field(default_factory=lambda: dict(DECODER_INPUTS))
    past: dict[str, str] = field(default_factory=lambda: dict(DECODER_PAST))  # per-layer input templates
    logits: str = "logits"  # (B, K, vocab) at logit_index
    keep: str = KEEP  # per-layer output template
    present: dict[str, str] = field(default_factory=lambda: dict(DECODER_PRESENT))  # per-layer output templates
    new_kint: str = NEW_KINT  # per-layer output template (DCP only)
    attention: str = ""  # per-layer output template of the attention probabilities ("": not exported)
    op_domain: str = DOMAIN
    op_domain_version: int = DOMAIN_VERSION
    ops: list[str] = field(default_factory=list)  # prunex ops the graph uses
    num_layers: int = 0
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    interaction_dim: int = 0  # R: width of past_kint (0 for dense)
    sink_tokens: int = 0  # DCP: the first tokens of a sequence, never dropped
    recent_tokens: int = 0  # DCP: an entry cannot be dropped by the next `recent_tokens` queries
    windows: list[int] = field(default_factory=list)  # per layer: its sliding window (0: global); []: none
    vocab_size: int = 0
    max_positions: int | None = None
    dtype: str = "float32"
    kv_cache: str = "float32"  # the K/V slot buffers' type: float32 or int8 (`prunex quantize --kv`)
    quantization: dict[str, Any] = field(default_factory=dict)  # empty: fp32; else mode, source, figures
    opset: int = 17
    eos_token_id: int | None = None
    source: str = ""  # the checkpoint dir or model name exported
    base_model: str = ""  # base model id
    base_model_hash: str = ""  # sha256 of the base weights
    validation: dict[str, Any] = field(default_factory=dict)  # figures of the check against PyTorch

    def name(self, template: str, layer: int) -> str:
        """A per-layer io name from a template of `past` / `present` / `keep` / `new_kint`."""
        return template % layer

    def past_fields(self) -> tuple[str, ...]:
        """The per-layer cache inputs this graph reads (a dense graph has no kint / guard; only a model with
        sliding-window layers reads positions)."""
        skip = (() if self.interaction_dim else ("kint", "guard")) + (() if any(self.windows) else ("positions",))
        return tuple(f for f in CACHE_FIELDS if f not in skip)

    def guard(self, positions):
        """The guard of entries at `positions` (int64 torch tensor or numpy array): the first query position
        that may drop them (never for sinks; a query never drops itself)."""
        sinks, guard = positions < self.sink_tokens, positions + max(self.recent_tokens, 1)
        return guard.masked_fill(sinks, NEVER) if hasattr(guard, "masked_fill") else np.where(sinks, NEVER, guard)

    def layer_outputs(self) -> list[str]:
        """The per-layer output templates, in graph order."""
        dcp = [self.keep, self.new_kint] if self.interaction_dim else []
        return [self.present["key"], self.present["value"]] + ([self.attention] if self.attention else []) + dcp

    def output_names(self) -> list[str]:
        """All graph outputs in order: logits, then per layer present key / value (and keep, new_kint)."""
        return [self.logits] + [t % layer for layer in range(self.num_layers) for t in self.layer_outputs()]


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
    manifest = _read(directory, "decoder", DecoderManifest)
    if manifest.kv_cache not in KV_CACHE_TYPES:
        raise PrunexError(f"{directory} keeps its K/V cache as {manifest.kv_cache!r}; this prunex runs "
                          f"{' or '.join(KV_CACHE_TYPES)}: upgrade prunex")
    return manifest


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
