"""A decoder's weights and block recipe in the form a fused ONNX graph is built from (`prunex.export.decoder_graph`).

Adapters fill it (`DecoderAdapter.graph_spec`); the graph builder knows nothing about Hugging Face classes.
Weights are laid out for `x @ W` (in, out). d hidden, H/KV heads, D head dim, I MLP width, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

NORMS = ("rms", "layer")  # RMSNorm (gamma only) | LayerNorm (gamma, beta)
ACTIVATIONS = ("silu_gated", "gelu_tanh_gated", "gelu_tanh", "gelu")  # gated: up holds [gate | up]


@dataclass
class Norm:
    gamma: Tensor  # (d,)
    beta: Tensor | None = None  # (d,) LayerNorm only


@dataclass
class LayerWeights:
    """One pre-norm block: norm -> attention (-> norm) -> residual, norm -> MLP (-> norm) -> residual."""

    attention_norm: Norm
    qkv: Tensor  # (d, H*D + 2*KV*D) packed [q | k | v]
    qkv_bias: Tensor | None
    out: Tensor  # (H*D, d)
    out_bias: Tensor | None
    mlp_norm: Norm
    up: Tensor  # (d, 2I) [gate | up] when the activation is gated, else (d, I)
    up_bias: Tensor | None
    down: Tensor  # (I, d)
    down_bias: Tensor | None
    scale: float  # the factor on q.k
    head_norms: tuple[Norm, Norm] | None = None  # RMSNorms (D,) over each head's q and k before RoPE (Qwen3)
    post_attention_norm: Norm | None = None  # a norm on the attention's output before the residual add (Gemma 3)
    post_mlp_norm: Norm | None = None  # a norm on the MLP's output before the residual add (Gemma 3)
    window: int | None = None  # a sliding-window layer's W (query n sees keys n - W + 1 .. n), None: global
    rotary: tuple[Tensor, Tensor] | None = None  # this layer's own cos, sin caches (another RoPE base), or None


@dataclass
class DecoderGraphSpec:
    """Everything a fused decoder graph needs from the model."""

    norm: str  # one of NORMS
    norm_eps: float
    activation: str  # one of ACTIVATIONS
    embed: Tensor  # (V, d)
    position_embed: Tensor | None  # (P, d) learned absolute positions, or None
    rotary: tuple[Tensor, Tensor] | None  # cos, sin caches (P, D/2) (halves rotated, not interleaved), or None
    layers: list[LayerWeights]
    final_norm: Norm
    lm_head: Tensor  # (d, V)
    lm_head_bias: Tensor | None
