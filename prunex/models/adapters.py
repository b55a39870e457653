"""Per-architecture adapters: how prunex reads the pieces of a causal LM's layers.

prunex runs its own layer loop (so that the KV cache can lose tokens per layer and per row); an adapter
exposes the pieces of one family in a common shape. Adapters are registered by Hugging Face `model_type`: the
Llama-like families (llama, mistral, qwen2) and GPT-2 here, the families that differ from Llama in a few pieces
in `prunex/models/families/`, one small file each.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import torch
from torch import Tensor

from prunex.errors import PrunexError
from prunex.models.graph_spec import DecoderGraphSpec, LayerWeights, Norm
from prunex.models.registry import AdapterRegistry

DECODERS: AdapterRegistry[DecoderAdapter] = AdapterRegistry("decoder pruning")


def register_decoder(*model_types: str) -> Callable[[type[DecoderAdapter]], type[DecoderAdapter]]:
    """Class decorator: register an adapter for these Hugging Face model types."""
    return DECODERS.register(*model_types)


def supported_decoder_types() -> list[str]:
    """The model types prunex can prune, sorted."""
    _register_families()
    return DECODERS.supported()


def decoder_adapter(model: torch.nn.Module) -> DecoderAdapter:
    """The registered adapter for `model`, or a clear error naming the supported families."""
    _register_families()
    return DECODERS.adapter(model)


def _register_families() -> None:
    """Import the families that live in files of their own (`prunex.models.families`): they register."""
    import prunex.models.families  # noqa: F401


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

    def attention_window(self, layer: int) -> int | None:
        """A sliding-window layer's window W (query n sees keys n - W + 1 .. n; older ones leave its cache),
        or None for a layer that attends to the whole (pruned) past."""
        return None

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

    @abstractmethod
    def graph_spec(self) -> DecoderGraphSpec:
        """The weights and block recipe for a fused ONNX graph (`prunex.export.decoder_graph`)."""


def linear_weight(linear: torch.nn.Linear) -> Tensor:
    """A Linear's weight as (in, out), for x @ W."""
    return linear.weight.detach().t()


def _bias(module: torch.nn.Module) -> Tensor | None:
    return None if getattr(module, "bias", None) is None else module.bias.detach()


def _sliding_window(config) -> int | None:
    """The attention window of a config whose layers (some or all) attend to a sliding window, else None."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    if getattr(config, "use_sliding_window", True) is False:
        return None
    return window if window is not None and window < config.max_position_embeddings else None


@register_decoder("llama", "mistral", "qwen2")
class LlamaAdapter(DecoderAdapter):
    """Llama-like: RMSNorm, RoPE (any scaling transformers computes ahead, Llama 3's included), grouped-query
    attention with optional q/k/v biases (Qwen2), gated SiLU MLP, sliding-window layers where the config has
    them: SmolLM2, Llama 2/3, Mistral (v0.1's window included), Qwen2/2.5.
    Families with other projections or extra norms subclass it (`families/`)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        config = model.config
        window = _sliding_window(config)  # Mistral v0.1: every layer; Qwen2, Gemma 3: the `layer_types` that say so
        types = getattr(config, "layer_types", None) or ["sliding_attention"] * config.num_hidden_layers
        self.windows = [window if kind == "sliding_attention" else None for kind in types]
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

    def projections(self, layer: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, d) -> q (B, T, H*D), k and v (B, T, KV*D), before any per-head norm or RoPE."""
        attn = self.layers[layer].self_attn
        return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)

    def head_norms(self, layer: int) -> tuple[torch.nn.Module, torch.nn.Module] | None:
        """RMSNorms over each head's q and k before RoPE (Qwen3), or None."""
        return None

    def qkv(self, layer: int, x: Tensor, positions: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        B, T, _ = x.shape
        q, k, v = (t.view(B, T, -1, self.head_dim) for t in self.projections(layer, x))  # (B, T, heads, D)
        norms = self.head_norms(layer)
        if norms is not None:
            q, k = norms[0](q), norms[1](k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # q (B, H, T, D), k / v (B, KV, T, D)
        cos, sin = positions
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def attention_window(self, layer: int) -> int | None:
        return self.windows[layer]

    def attention_scale(self, layer: int) -> float:
        return self.layers[layer].self_attn.scaling

    def attention_output(self, layer: int, attended: Tensor) -> Tensor:
        return self.layers[layer].self_attn.o_proj(attended)

    def mlp_block(self, layer: int, hidden: Tensor) -> Tensor:
        block = self.layers[layer]
        return hidden + block.mlp(block.post_attention_layernorm(hidden))

    def logits(self, hidden: Tensor) -> Tensor:
        return self.model.lm_head(self.model.model.norm(hidden))

    def packed_qkv(self, layer: int) -> tuple[Tensor, Tensor | None]:
        """The [q | k | v] projection as (d, (H + 2 KV) D) and its bias."""
        attn = self.layers[layer].self_attn
        q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
        biases = [_bias(m) for m in (q, k, v)]
        packed = torch.cat([linear_weight(q), linear_weight(k), linear_weight(v)], dim=1)
        return packed, None if biases[0] is None else torch.cat(biases)

    def packed_up(self, layer: int) -> tuple[Tensor, Tensor | None]:
        """The [gate | up] projection as (d, 2I) and its bias."""
        mlp = self.layers[layer].mlp
        bias = None if mlp.up_proj.bias is None else torch.cat([_bias(mlp.gate_proj), _bias(mlp.up_proj)])
        return torch.cat([linear_weight(mlp.gate_proj), linear_weight(mlp.up_proj)], dim=1), bias

    def rotary_tables(self) -> tuple[Tensor, Tensor]:
        """cos, sin (P, D/2) for every position, as the model computes them (rope scaling included)."""
        config, inner = self.model.config, self.model.model
        positions = torch.arange(config.max_position_embeddings)[None]  # (1, P)
        cos, sin = inner.rotary_emb(inner.embed_tokens.weight[:1, None].float(), positions)  # (1, P, D) each
        half = cos.shape[-1] // 2
        if 2 * half != self.head_dim:
            raise PrunexError(f"the fused graph rotates whole heads; this {config.model_type} model rotates "
                              f"{2 * half} of {self.head_dim} dims (partial rotary)")
        return cos[0, :, :half].detach(), sin[0, :, :half].detach()

    def graph_spec(self) -> DecoderGraphSpec:
        config, inner = self.model.config, self.model.model
        if getattr(config, "hidden_act", "silu") != "silu":
            raise PrunexError(f"the fused graph builds SiLU-gated MLPs, not {config.hidden_act!r}")
        layers = []
        for layer, block in enumerate(self.layers):
            attn, mlp = block.self_attn, block.mlp
            qkv, qkv_bias = self.packed_qkv(layer)
            up, up_bias = self.packed_up(layer)
            norms = self.head_norms(layer)
            layers.append(LayerWeights(
                attention_norm=Norm(block.input_layernorm.weight.detach()),
                qkv=qkv, qkv_bias=qkv_bias, out=linear_weight(attn.o_proj), out_bias=_bias(attn.o_proj),
                mlp_norm=Norm(block.post_attention_layernorm.weight.detach()),
                up=up, up_bias=up_bias, down=linear_weight(mlp.down_proj), down_bias=_bias(mlp.down_proj),
                scale=self.attention_scale(layer), window=self.attention_window(layer),
                head_norms=None if norms is None else (Norm(norms[0].weight.detach()), Norm(norms[1].weight.detach())),
            ))
        return DecoderGraphSpec(
            norm="rms", norm_eps=float(config.rms_norm_eps), activation="silu_gated",
            embed=inner.embed_tokens.weight.detach(), position_embed=None, rotary=self.rotary_tables(),
            layers=layers, final_norm=Norm(inner.norm.weight.detach()),
            lm_head=linear_weight(self.model.lm_head), lm_head_bias=_bias(self.model.lm_head),
        )


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

    def graph_spec(self) -> DecoderGraphSpec:
        activations = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
        name = self.config.activation_function
        if name not in activations:
            raise PrunexError(f"the fused graph has no {name!r} activation (it has {', '.join(activations)})")
        transformer = self.model.transformer

        def norm(ln: torch.nn.LayerNorm) -> Norm:
            return Norm(ln.weight.detach(), ln.bias.detach())

        layers = [
            LayerWeights(  # GPT-2's Conv1D weights are already (in, out)
                attention_norm=norm(block.ln_1), qkv=block.attn.c_attn.weight.detach(),
                qkv_bias=block.attn.c_attn.bias.detach(),
                out=block.attn.c_proj.weight.detach(), out_bias=block.attn.c_proj.bias.detach(),
                mlp_norm=norm(block.ln_2), up=block.mlp.c_fc.weight.detach(), up_bias=block.mlp.c_fc.bias.detach(),
                down=block.mlp.c_proj.weight.detach(), down_bias=block.mlp.c_proj.bias.detach(),
                scale=self.attention_scale(layer),
            )
            for layer, block in enumerate(self.blocks)
        ]
        return DecoderGraphSpec(
            norm="layer", norm_eps=float(self.config.layer_norm_epsilon), activation=activations[name],
            embed=transformer.wte.weight.detach(), position_embed=transformer.wpe.weight.detach(), rotary=None,
            layers=layers, final_norm=norm(transformer.ln_f),
            lm_head=linear_weight(self.model.lm_head), lm_head_bias=_bias(self.model.lm_head),
        )
