"""Gemma 3 (`gemma3_text`): Llama's attention with per-head q/k RMSNorms, a norm after the attention and after
the MLP besides the ones before, GELU-tanh gating, embeddings scaled by sqrt(d) (inside the embedding module),
attention scaled by query_pre_attn_scalar^-1/2, and sliding-window layers (5 of every 6 in the released models,
each with its own RoPE base) beside global ones. A sliding layer keeps only its window: older entries leave
its cache (`LlamaAdapter.attention_window`); learned and run-time pruning decide over what is left."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prunex.errors import PrunexError
from prunex.models.adapters import LlamaAdapter, linear_weight, register_decoder
from prunex.models.graph_spec import DecoderGraphSpec, LayerWeights, Norm


@register_decoder("gemma3_text")
class Gemma3Adapter(LlamaAdapter):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        config = model.config
        for name in ("attn_logit_softcapping", "final_logit_softcapping"):
            if getattr(config, name, None) is not None:
                raise PrunexError(f"gemma3_text with {name} is not supported: prunex's attention has no soft cap")
        self.layer_types = list(config.layer_types)

    def position_context(self, hidden: Tensor, position_ids: Tensor) -> dict[str, Any]:
        rotary = self.model.model.rotary_emb
        return {kind: rotary(hidden, position_ids, kind) for kind in set(self.layer_types)}  # RoPE base per type

    def head_norms(self, layer: int) -> tuple[torch.nn.Module, torch.nn.Module]:
        attn = self.layers[layer].self_attn
        return attn.q_norm, attn.k_norm

    def qkv(self, layer: int, x: Tensor, positions: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        return super().qkv(layer, x, positions[self.layer_types[layer]])

    def attention_output(self, layer: int, attended: Tensor) -> Tensor:
        block = self.layers[layer]
        return block.post_attention_layernorm(block.self_attn.o_proj(attended))

    def mlp_block(self, layer: int, hidden: Tensor) -> Tensor:
        block = self.layers[layer]
        return hidden + block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(hidden)))

    def rotary_tables(self, kind: str = "full_attention") -> tuple[Tensor, Tensor]:
        """cos, sin (P, D/2) of the layers of type `kind` (sliding and global layers have their own RoPE base)."""
        config, inner = self.model.config, self.model.model
        positions = torch.arange(config.max_position_embeddings)[None]  # (1, P)
        cos, sin = inner.rotary_emb(inner.embed_tokens.weight[:1, None].float(), positions, kind)  # (1, P, D)
        half = cos.shape[-1] // 2
        return cos[0, :, :half].detach(), sin[0, :, :half].detach()

    def graph_spec(self) -> DecoderGraphSpec:
        config, inner = self.model.config, self.model.model
        if config.hidden_activation != "gelu_pytorch_tanh":
            raise PrunexError(f"the fused graph builds GELU-tanh-gated Gemma MLPs, not {config.hidden_activation!r}")
        tables = {kind: self.rotary_tables(kind) for kind in set(self.layer_types)}
        layers = []
        for layer, block in enumerate(self.layers):
            attn, mlp = block.self_attn, block.mlp
            up, up_bias = self.packed_up(layer)
            layers.append(LayerWeights(
                attention_norm=_gemma_norm(block.input_layernorm),
                qkv=self.packed_qkv(layer)[0], qkv_bias=None, out=linear_weight(attn.o_proj), out_bias=None,
                mlp_norm=_gemma_norm(block.pre_feedforward_layernorm),
                up=up, up_bias=up_bias, down=linear_weight(mlp.down_proj), down_bias=None,
                scale=self.attention_scale(layer),
                head_norms=(_gemma_norm(attn.q_norm), _gemma_norm(attn.k_norm)),
                post_attention_norm=_gemma_norm(block.post_attention_layernorm),
                post_mlp_norm=_gemma_norm(block.post_feedforward_layernorm),
                window=self.attention_window(layer), rotary=tables[self.layer_types[layer]],
            ))
        embed = inner.embed_tokens
        return DecoderGraphSpec(
            norm="rms", norm_eps=float(config.rms_norm_eps), activation="gelu_tanh_gated",
            embed=embed.weight.detach() * float(embed.scalar_embed_scale), position_embed=None, rotary=None,
            layers=layers, final_norm=_gemma_norm(inner.norm), lm_head=linear_weight(self.model.lm_head),
            lm_head_bias=None,
        )


def _gemma_norm(norm: torch.nn.Module) -> Norm:
    """Gemma's RMSNorm scales by (1 + weight)."""
    return Norm(1.0 + norm.weight.detach().float())
