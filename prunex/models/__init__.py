"""Base models: where they come from (sources) and how prunex reads their layers (adapters)."""

from prunex.models.adapters import DecoderAdapter, decoder_adapter, supported_decoder_types
from prunex.models.sources import LoadedModel, load_model, weights_hash

__all__ = [
    "DecoderAdapter",
    "LoadedModel",
    "decoder_adapter",
    "load_model",
    "supported_decoder_types",
    "weights_hash",
]
