"""Per-architecture adapters: how prunex reads the pieces of a causal LM's layers.

prunex runs its own layer loop (so that the KV cache can lose tokens per layer and per row); an adapter
exposes the pieces of one family in a common shape. Adapters are registered by Hugging Face `model_type`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import torch
from torch import Tensor

from prunex.errors import PrunexError
from prunex.models.registry import AdapterRegistry

DECODERS: AdapterRegistry[DecoderAdapter] = AdapterRegistry("decoder pruning")


def register_decoder(*model_types: str) -> Callable[[type[DecoderAdapter]], type[DecoderAdapter]]:
    """Class decorator: register an adapter for these Hugging Face model types."""
    return DECODERS.register(*model_types)


def supported_decoder_types() -> list[str]:
    """The model types prunex can prune, sorted."""
    return DECODERS.supported()


def decoder_adapter(model: torch.nn.Module) -> DecoderAdapter:
    """The registered adapter for `model`, or a clear error naming the supported families."""
    return DECODERS.adapter(model)


class DecoderAdapter(ABC):
    """The pieces of a pre-norm causal LM. B batch, T tokens, d hidden, H/KV heads, D head dim."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    @abstractmethod
    def embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        """(B, T) ids and logical positions -> (B, T, d) residual stream."""

    def position_context(self, hidden: Tensor, position_ids: Tensor) -> Any:
        """Whatever `qkv` needs about positions, computed once per forward (RoPE cos/sin)."""
        return None

    @abstractmethod
    def attention_input(self, layer: int, hidden: Tensor) -> Tensor:
        """(B, T, d) residual -> (B, T, d) normalized attention input (also the interaction heads' input)."""

    @abstractmethod
    def qkv(self, layer: int, x: Tensor, positions: Any) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, d) -> q (B, H, T, D), k (B, KV, T, D), v (B, KV, T, D), positions already applied."""

    @abstractmethod
    def attention_scale(self, layer: int) -> float:
        """The factor on q.k inside softmax."""

    @abstractmethod
    def attention_output(self, layer: int, attended: Tensor) -> Tensor:
        """(B, T, H*D) attended values -> (B, T, d) to add to the residual."""

    @abstractmethod
    def mlp_block(self, layer: int, hidden: Tensor) -> Tensor:
        """(B, T, d) residual -> residual after the layer's MLP sub-block."""

    @abstractmethod
    def logits(self, hidden: Tensor) -> Tensor:
        """(B, T, d) last residual -> (B, T, vocab) logits."""


@register_decoder("llama")
class LlamaAdapter(DecoderAdapter):
    """Llama-like: RMSNorm, RoPE, grouped-query attention, gated MLP (SmolLM2, Llama 2/3)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        config = model.config
        self.layers = model.model.layers
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.hidden_size = config.hidden_size
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        return self.model.model.embed_tokens(input_ids)

    def position_context(self, hidden: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.model.rotary_emb(hidden, position_ids)  # cos, sin: (B, T, D)

    def attention_input(self, layer: int, hidden: Tensor) -> Tensor:
        return self.layers[layer].input_layernorm(hidden)

    def qkv(self, layer: int, x: Tensor, positions: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        attn = self.layers[layer].self_attn
        B, T, _ = x.shape
        q = attn.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = attn.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        v = attn.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        cos, sin = positions
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def attention_scale(self, layer: int) -> float:
        return self.layers[layer].self_attn.scaling

    def attention_output(self, layer: int, attended: Tensor) -> Tensor:
        return self.layers[layer].self_attn.o_proj(attended)

    def mlp_block(self, layer: int, hidden: Tensor) -> Tensor:
        block = self.layers[layer]
        return hidden + block.mlp(block.post_attention_layernorm(hidden))

    def logits(self, hidden: Tensor) -> Tensor:
        return self.model.lm_head(self.model.model.norm(hidden))


@register_decoder("gpt2")
class GPT2Adapter(DecoderAdapter):
    """GPT-2: LayerNorm, learned absolute positions, multi-head attention, GELU MLP."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        config = model.config
        if getattr(config, "reorder_and_upcast_attn", False):
            raise PrunexError("GPT-2 models with reorder_and_upcast_attn=True are not supported")
        self.config = config
        self.blocks = model.transformer.h
        self.num_layers = config.n_layer
        self.num_heads = self.num_kv_heads = config.n_head
        self.hidden_size = config.n_embd
        self.head_dim = config.n_embd // config.n_head

    def embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        transformer = self.model.transformer
        return transformer.wte(input_ids) + transformer.wpe(position_ids)

    def attention_input(self, layer: int, hidden: Tensor) -> Tensor:
        return self.blocks[layer].ln_1(hidden)

    def qkv(self, layer: int, x: Tensor, positions: Any) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        q, k, v = self.blocks[layer].attn.c_attn(x).split(self.hidden_size, dim=2)
        return tuple(t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))

    def attention_scale(self, layer: int) -> float:
        scale = self.head_dim**-0.5 if self.config.scale_attn_weights else 1.0
        if getattr(self.config, "scale_attn_by_inverse_layer_idx", False):
            scale /= layer + 1
        return scale

    def attention_output(self, layer: int, attended: Tensor) -> Tensor:
        return self.blocks[layer].attn.c_proj(attended)

    def mlp_block(self, layer: int, hidden: Tensor) -> Tensor:
        block = self.blocks[layer]
        return hidden + block.mlp(block.ln_2(hidden))

    def logits(self, hidden: Tensor) -> Tensor:
        return self.model.lm_head(self.model.transformer.ln_f(hidden))
