"""Per-architecture adapters for encoder classifiers (BERT-like), registered by Hugging Face `model_type`.

prunex runs its own layer loop over an encoder (so that tokens can leave the sequence between layers, see
`prunex.prune.encoder_forward`); an adapter exposes one family's modules in a common shape.
B batch, n tokens (shrinks layer by layer under pruning), d hidden, H heads, D head dim, C labels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from prunex.errors import PrunexError
from prunex.models.registry import AdapterRegistry

ENCODERS: AdapterRegistry[EncoderAdapter] = AdapterRegistry("encoder token pruning")


def register_encoder(*model_types: str) -> Callable[[type[EncoderAdapter]], type[EncoderAdapter]]:
    """Class decorator: register an encoder adapter for these Hugging Face model types."""
    return ENCODERS.register(*model_types)


def supported_encoder_types() -> list[str]:
    """The encoder model types prunex can token-prune, sorted."""
    return ENCODERS.supported()


def encoder_adapter(model: torch.nn.Module) -> EncoderAdapter:
    """The registered adapter for a `...ForSequenceClassification` model, or a clear error."""
    return ENCODERS.adapter(model)


class EncoderAdapter(ABC):
    """The pieces of a post-norm encoder classifier (BERT layout)."""

    num_layers: int
    num_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        config = model.config
        if getattr(config, "is_decoder", False):
            raise PrunexError(f"{config.model_type} configured as a decoder cannot be used as an encoder classifier")
        position_type = getattr(config, "position_embedding_type", "absolute") or "absolute"
        if position_type != "absolute":
            raise PrunexError(f"position_embedding_type {position_type!r} is not supported (only 'absolute')")
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.hidden_size = config.hidden_size
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.intermediate_size = config.intermediate_size
        self.layers = self.encoder.encoder.layer

    @property
    def max_length(self) -> int:
        """The longest input the position table allows."""
        return self.model.config.max_position_embeddings

    @property
    def encoder(self) -> torch.nn.Module:
        """The bare encoder (`model.bert`, `model.roberta`, ...): the pretrained part of the classifier."""
        return self.model.base_model

    def embed(self, input_ids: Tensor) -> Tensor:
        """(B, T) right-padded ids -> (B, T, d) embeddings (positions 0..T-1, token type 0)."""
        return self.encoder.embeddings(input_ids=input_ids)

    def qkv(self, layer: int, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, n, d) -> q, k, v, each (B, H, n, D)."""
        attn = self.layers[layer].attention.self
        B, n, _ = hidden.shape
        return tuple(
            proj(hidden).view(B, n, self.num_heads, self.head_dim).transpose(1, 2)
            for proj in (attn.query, attn.key, attn.value)
        )

    def attention_scale(self, layer: int) -> float:
        """The factor on q.k inside softmax."""
        return self.head_dim**-0.5

    def attention_dropout(self, layer: int, probs: Tensor) -> Tensor:
        """Dropout on (B, H, n, n) attention probabilities (active only in train mode)."""
        return self.layers[layer].attention.self.dropout(probs)

    def attention_block(self, layer: int, attended: Tensor, residual: Tensor) -> Tensor:
        """(B, m, H*D) attended values and (B, m, d) residual -> (B, m, d): out projection, add, LayerNorm."""
        return self.layers[layer].attention.output(attended, residual)

    def ffn_block(self, layer: int, hidden: Tensor) -> Tensor:
        """(B, m, d) -> (B, m, d): intermediate, output projection, add, LayerNorm."""
        block = self.layers[layer]
        return block.output(block.intermediate(hidden), hidden)

    @abstractmethod
    def classify(self, hidden: Tensor) -> Tensor:
        """(B, m, d) last hidden states with [CLS] at index 0 of every row -> (B, C) logits."""


@register_encoder("bert")
class BertAdapter(EncoderAdapter):
    """BERT (and MiniLM, which is a BertModel): pooler (dense + tanh on [CLS]), dropout, linear classifier."""

    def classify(self, hidden: Tensor) -> Tensor:
        pooled = self.encoder.pooler(hidden)  # (B, d): reads hidden[:, 0]
        return self.model.classifier(self.model.dropout(pooled))


@register_encoder("roberta")
class RobertaAdapter(EncoderAdapter):
    """RoBERTa: positions offset by the padding index (handled by its embeddings); head on <s>."""

    @property
    def max_length(self) -> int:
        return self.model.config.max_position_embeddings - self.model.config.pad_token_id - 1

    def classify(self, hidden: Tensor) -> Tensor:
        return self.model.classifier(hidden)  # RobertaClassificationHead reads hidden[:, 0]
