"""Phi-3 / Phi-4-mini: Llama's layout with q|k|v in one projection and gate|up in another."""

from __future__ import annotations

import torch
from torch import Tensor

from prunex.errors import PrunexError
from prunex.models.adapters import LlamaAdapter, register_decoder


@register_decoder("phi3")
class Phi3Adapter(LlamaAdapter):
    def __init__(self, model: torch.nn.Module) -> None:
        rope = getattr(model.config, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") == "longrope":  # its factors switch with the sequence length
            raise PrunexError("phi3 with LongRoPE scaling (the 128K-context variants) is not supported yet: its "
                              "rotary factors change with the sequence length; the 4K-context models work")
        super().__init__(model)

    def projections(self, layer: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        packed = self.layers[layer].self_attn.qkv_proj(x)  # (B, T, (H + 2 KV) D)
        q_width, kv_width = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return packed.split([q_width, kv_width, kv_width], dim=-1)

    def packed_qkv(self, layer: int) -> tuple[Tensor, Tensor | None]:
        projection = self.layers[layer].self_attn.qkv_proj  # already [q | k | v]
        return projection.weight.detach().t(), None if projection.bias is None else projection.bias.detach()

    def packed_up(self, layer: int) -> tuple[Tensor, Tensor | None]:
        projection = self.layers[layer].mlp.gate_up_proj  # already [gate | up]
        return projection.weight.detach().t(), None if projection.bias is None else projection.bias.detach()
