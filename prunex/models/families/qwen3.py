"""Qwen3: Llama's layout plus an RMSNorm over each head's query and key, before RoPE."""

from __future__ import annotations

import torch

from prunex.models.adapters import LlamaAdapter, register_decoder


@register_decoder("qwen3")
class Qwen3Adapter(LlamaAdapter):
    def head_norms(self, layer: int) -> tuple[torch.nn.Module, torch.nn.Module]:
        attn = self.layers[layer].self_attn
        return attn.q_norm, attn.k_norm
