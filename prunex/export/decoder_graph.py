"""The fused decoder graph: ONNX Runtime's contrib operators around DCP's keep decisions, written node by node.

One graph serves prefill chunks and decode steps (S new tokens per row over the runtime's slot buffers):
- attention is `com.microsoft.GroupQueryAttention` over per-layer buffers of capacity W that are both its past
  and its present (the runtime binds them to the same memory): it writes the S new keys / values of each row
  into slots fill .. fill + S - 1 in place, applies RoPE at the explicit `position_ids` (a compacted cache keeps
  logical positions) and masks the slots the keep decisions drop with `attention_bias`;
- norms are `SkipSimplifiedLayerNormalization` / `SkipLayerNormalization` (the residual add fused in), q|k|v
  (and DCP's q_int|k_int) one packed MatMul, gate|up another;
- the keep decisions (DCP, hard): query n keeps slot j while every query m <= n of the step kept it
  (q_int(m) . k_int(j) / sqrt(r) + beta > 0, or j is a sink, or j is among the last `recent` tokens of m); a
  new token never drops itself. They come out as `keep` (B, W), the slots' validity after the step.
The graph never compacts: the runtime packs a layer's kept entries now and then (`prunex.runtime.slot_cache`).

Each layer has its own capacity W (`capacity.<layer>`): the runtime sizes a layer's buffers to what that layer
keeps, so the keep decisions and the attention of a layer that prunes hard cover few slots.

Shapes: B rows, S new tokens, W the layer's slot capacity, H / KV heads, D head dim, d hidden, r DCP interaction
width.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from onnx import helper

from prunex.export.onnx_builder import BOOL, FLOAT, INT32, INT64, MS_DOMAIN, GraphBuilder
from prunex.format import NEVER, DecoderManifest
from prunex.models.graph_spec import DecoderGraphSpec, Norm
from prunex.prune.dcp import DCPPolicy


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


class _Globals:
    """Values every layer shares, computed once per run."""

    def __init__(self, g: GraphBuilder, m: DecoderManifest, ids: str, positions: str) -> None:
        self.seq = g.op("Shape", ids, start=1, end=2)  # (1,) S
        self.batch = g.op("Shape", ids, start=0, end=1)  # (1,) B
        self.query_rows = g.op("Concat", g.const([1, 1]), self.seq, g.const([1]), axis=0)  # [1, 1, S, 1]
        if not m.interaction_dim:
            if any(m.windows):  # a dense graph with sliding-window layers
                self.query_positions = g.op("Unsqueeze", positions, g.const([2]))  # (B, S, 1)
            return
        self.decoding = g.op("Equal", g.op("Squeeze", self.seq), g.const(1))  # () bool: one new token a row
        self.query_positions = g.op("Unsqueeze", positions, g.const([2]))  # (B, S, 1)
        # The new keys' guards, as the runtime stores them for cached entries (`protection_guard`)
        new_positions = g.op("Unsqueeze", positions, g.const([1]))  # (B, 1, S)
        guard = g.op("Add", new_positions, g.const(max(m.recent_tokens, 1)))
        self.new_guard = g.op("Where", g.op("Less", new_positions, g.const(m.sink_tokens)), g.const(NEVER), guard)
        self.last_new = g.op("Squeeze", g.op("Sub", self.seq, g.const([1])))  # () S - 1


def _kept_so_far(g: GraphBuilder, step_keep: str) -> str:
    """(B, S, K) per-query keeps -> (B, S, K) bool: kept by queries 0..n (a dropped key stays dropped)."""
    dropped = g.op("CumSum", g.op("Cast", g.op("Not", step_keep), to=INT32), g.const(1))
    return g.op("Equal", dropped, g.const(0, np.int32))


def _prefill_keep(g: GraphBuilder, glob: _Globals, past: dict[str, str], q_int: str, k_int: str, threshold: str,
                  step_keep: str) -> str:
    """The `If` branch for S > 1 new tokens a row: cumulative decisions over the past slots and, placed in
    their slots, over the new keys (their interaction keys are not in the buffer yet). Returns
    (B, S, W) keep per query."""
    kept_past = g.op("And", past["valid"], _kept_so_far(g, step_keep))  # (B, S, W)
    scores_new = g.op("MatMul", q_int, g.op("Transpose", k_int, perm=[0, 2, 1]))  # (B, S, S)
    kept_new = _kept_so_far(g, g.op("Or", g.op("Greater", scores_new, threshold),
                                    g.op("Less", glob.query_positions, glob.new_guard)))  # (B, S, S)
    first_new = g.op("Sub", g.op("Cast", past["seqlens"], to=INT64), glob.last_new)  # (B,) fill before the step
    capacity = g.op("Shape", past["valid"], start=2, end=3)  # (1,) W
    slots = g.op("Unsqueeze", g.op("Range", g.const(0), g.op("Squeeze", capacity), g.const(1)),
                 g.const([0, 1]))  # (1, 1, W)
    offset = g.op("Sub", slots, g.op("Unsqueeze", first_new, g.const([1, 2])))  # (B, 1, W): the new ones at 0..S-1
    is_new = g.op("And", g.op("GreaterOrEqual", offset, g.const(0)), g.op("Less", offset, glob.seq))
    queries_shape = g.op("Concat", glob.batch, glob.seq, capacity, axis=0)  # [B, S, W]
    index = g.op("Expand", g.op("Clip", offset, g.const(0), glob.last_new), queries_shape)  # (B, S, W)
    placed = g.op("And", g.op("GatherElements", kept_new, index, axis=2), is_new)  # (B, S, W)
    keep = g.op("Or", placed, g.op("And", kept_past, g.op("Not", is_new)))  # (no bool Where on ORT's CPU)
    return keep


def _dcp_keep(g: GraphBuilder, glob: _Globals, layer: int, m: DecoderManifest, q_int: str, k_int: str,
              beta: float, output: str) -> str:
    """DCP's keep decisions of the layer's S queries over its slots, named `output`, (B, S, W)."""
    past = {f: m.name(m.past[f], layer) for f in m.past_fields()}
    threshold = g.const(-beta, np.float32)  # keep iff q.k / sqrt(r) + beta > 0 (1 / sqrt(r) is in q_int)
    scores = g.op("MatMul", q_int, past["kint"])  # (B, S, r) @ (B, r, W) -> (B, S, W)
    step_keep = g.op("Or", g.op("Greater", scores, threshold),
                     g.op("Less", glob.query_positions, past["guard"]))  # (B, S, W): this query alone keeps
    decode = g.branch(f"layers.{layer}.decode_keep")
    kept = decode.op("And", past["valid"], step_keep)  # (B, 1, W): one query, nothing to accumulate
    prefill = g.branch(f"layers.{layer}.prefill_keep")
    return g.op("If", glob.decoding, then_branch=decode.body([kept]), outputs=[output],
                else_branch=prefill.body([_prefill_keep(prefill, glob, past, q_int, k_int, threshold, step_keep)]))


def _within_window(g: GraphBuilder, glob: _Globals, m: DecoderManifest, layer: int, window: int) -> str:
    """(B, S, W) bool: slot j holds an entry that query n of a sliding-window layer still sees (n - p_j < W)."""
    age = g.op("Sub", glob.query_positions, m.name(m.past["positions"], layer))  # (B, S, 1) - (B, 1, W)
    return g.op("Less", age, g.const(window))


class _Blocks:
    """The norm / MLP pieces of one architecture."""

    def __init__(self, g: GraphBuilder, spec: DecoderGraphSpec, opset: int) -> None:
        self.g, self.spec, self.opset = g, spec, opset

    def _norm_weights(self, name: str, norm: Norm) -> list[str]:
        names = [self.g.weight(f"{name}.gamma", _np(norm.gamma))]
        if self.spec.norm == "layer":
            names.append(self.g.weight(f"{name}.beta", _np(norm.beta)))
        return names

    def first_norm(self, name: str, norm: Norm, x: str) -> str:
        g, eps = self.g, self.spec.norm_eps
        weights = self._norm_weights(name, norm)
        if self.spec.norm == "layer":
            return g.op("LayerNormalization", x, *weights, axis=-1, epsilon=eps)
        return self._rms(x, weights[0])

    def _rms(self, x: str, gamma: str) -> str:
        """RMSNorm over the last axis in plain ops (opset 17 has none); ONNX Runtime fuses it into
        SimplifiedLayerNormalization."""
        g = self.g
        square = g.op("Mul", x, x)
        mean_square = (g.op("ReduceMean", square, g.const([-1]), keepdims=1) if self.opset >= 18  # axes an input
                       else g.op("ReduceMean", square, axes=[-1], keepdims=1))
        inverse = g.op("Reciprocal", g.op("Sqrt", g.op("Add", mean_square, g.const(self.spec.norm_eps, np.float32))))
        return g.op("Mul", g.op("Mul", x, inverse), gamma)

    def head_norms(self, name: str, qkv: str, norms: tuple[Norm, Norm], heads: int, kv_heads: int, D: int) -> str:
        """Packed q|k|v (B, S, (H + 2 KV) D) with each head of q and k RMS-normed (Qwen3), packed again."""
        g = self.g
        q, k, v = g.op("Split", qkv, g.const([heads * D, kv_heads * D, kv_heads * D]), axis=-1, outputs=3)
        normed = []
        for part, norm, count, tag in ((q, norms[0], heads, "q"), (k, norms[1], kv_heads, "k")):
            per_head = g.op("Reshape", part, g.const([0, 0, count, D]))  # (B, S, count, D)
            gamma = g.weight(f"{name}.{tag}_norm.gamma", _np(norm.gamma))
            normed.append(g.op("Reshape", self._rms(per_head, gamma), g.const([0, 0, count * D])))
        return g.op("Concat", *normed, v, axis=-1)

    def post_norm(self, name: str, norm: Norm | None, x: str) -> str:
        """A block's output normed before it joins the residual (Gemma 3), or as it is."""
        return x if norm is None else self._rms(x, self.g.weight(f"{name}.gamma", _np(norm.gamma)))

    def skip_norm(self, name: str, norm: Norm, x: str, residual: str) -> tuple[str, str]:
        """(normed residual + x, residual + x): the residual add fused into the next norm."""
        op = "SkipLayerNormalization" if self.spec.norm == "layer" else "SkipSimplifiedLayerNormalization"
        normed, total = f"{name}.out", f"{name}.residual"
        self.g.op(op, x, residual, *self._norm_weights(name, norm), outputs=[normed, "", "", total],
                  domain=MS_DOMAIN, epsilon=self.spec.norm_eps)
        return normed, total

    def linear(self, name: str, x: str, weight: torch.Tensor, bias: torch.Tensor | None) -> str:
        y = self.g.op("MatMul", x, self.g.weight(f"{name}.weight", _np(weight)))
        return y if bias is None else self.g.op("Add", y, self.g.weight(f"{name}.bias", _np(bias)))

    def mlp(self, name: str, x: str, layer) -> str:
        g = self.g
        up = self.linear(f"{name}.up", x, layer.up, layer.up_bias)
        if self.spec.activation in ("silu_gated", "gelu_tanh_gated"):
            width = layer.up.shape[1] // 2
            gate, value = g.op("Split", up, g.const([width, width]), axis=-1, outputs=2)
            if self.spec.activation == "silu_gated":
                activated = g.op("Mul", gate, g.op("Sigmoid", gate))
            else:
                activated = g.op("FastGelu", gate, domain=MS_DOMAIN)
            hidden = g.op("Mul", activated, value)
        else:
            hidden = g.op("FastGelu" if self.spec.activation == "gelu_tanh" else "Gelu", up, domain=MS_DOMAIN)
        return self.linear(f"{name}.down", hidden, layer.down, layer.down_bias)


def build_decoder_graph(spec: DecoderGraphSpec, m: DecoderManifest, policy: DCPPolicy | None):
    """The fused decoder graph of `spec` (with `policy`'s DCP heads, or dense) as an onnx.ModelProto."""
    g = GraphBuilder("prunex_decoder")
    H, KV, D, r = m.num_heads, m.num_kv_heads, m.head_dim, m.interaction_dim
    ids = g.input(m.inputs["input_ids"], INT64, ["batch", "seq"])
    positions = g.input(m.inputs["position_ids"], INT64, ["batch", "seq"])
    wanted = g.input(m.inputs["logit_index"], INT64, ["batch", "wanted"])
    types = {"key": FLOAT, "value": FLOAT, "kint": FLOAT, "valid": BOOL, "guard": INT64, "positions": INT64,
             "seqlens": INT32, "capacity": INT32}
    shapes = [_buffer_shapes(m, f"capacity.{layer}") for layer in range(m.num_layers)]
    for layer in range(m.num_layers):
        for f in m.past_fields():
            g.input(m.name(m.past[f], layer), types[f], shapes[layer][f])
    glob = _Globals(g, m, ids, positions)
    blocks = _Blocks(g, spec, m.opset)

    hidden = g.op("Gather", g.weight("embed", _np(spec.embed)), ids)  # (B, S, d)
    if spec.position_embed is not None:
        hidden = g.op("Add", hidden, g.op("Gather", g.weight("position_embed", _np(spec.position_embed)), positions))
    rotary = ["", ""] if spec.rotary is None else [g.weight("rope.cos", _np(spec.rotary[0])),
                                                   g.weight("rope.sin", _np(spec.rotary[1]))]
    tables = {}  # a layer's own rotary tables (another RoPE base), shared by the layers that use them
    for weights in spec.layers:
        if weights.rotary is not None and id(weights.rotary) not in tables:
            tag = f"rope.{len(tables) + 1}"
            tables[id(weights.rotary)] = [g.weight(f"{tag}.cos", _np(weights.rotary[0])),
                                          g.weight(f"{tag}.sin", _np(weights.rotary[1]))]
    residual, pending = hidden, None  # pending: the last block's output, added to the residual by the next norm
    for layer, weights in enumerate(spec.layers):
        name, W = f"layers.{layer}", f"capacity.{layer}"
        if pending is None:
            x = blocks.first_norm(f"{name}.attention_norm", weights.attention_norm, residual)
        else:
            x, residual = blocks.skip_norm(f"{name}.attention_norm", weights.attention_norm, pending, residual)
        if policy is None:
            qkv = blocks.linear(f"{name}.qkv", x, weights.qkv, weights.qkv_bias)  # (B, S, (H + 2 KV) D) packed
        else:  # q_int | k_int from the same MatMul; 1 / sqrt(r) folded into q_int
            q_int = policy.q_int[layer].weight.detach().t() / math.sqrt(r)
            projection = torch.cat([weights.qkv, q_int, policy.k_int[layer].weight.detach().t()], dim=1)
            bias = weights.qkv_bias
            if bias is not None:
                bias = torch.cat([bias, bias.new_zeros(2 * r)])
            qkv, q_int, k_int = g.op("Split", blocks.linear(f"{name}.qkv", x, projection, bias),
                                     g.const([(H + 2 * KV) * D, r, r]), axis=-1,
                                     outputs=[f"{name}.qkv", f"{name}.q_int", m.name(m.new_kint, layer)])
        if weights.head_norms is not None:
            qkv = blocks.head_norms(f"{name}.head", qkv, weights.head_norms, H, KV, D)
        window = weights.window
        if policy is None:  # the valid slots, the same for every query (causality is the attention's)
            keep = m.name(m.past["valid"], layer)  # (B, 1, W)
            if window is not None:
                keep = g.op("And", keep, _within_window(g, glob, m, layer, window))  # (B, S, W)
        else:
            output = m.name(m.keep, layer)
            keep = _dcp_keep(g, glob, layer, m, q_int, k_int, float(policy.bias[layer].detach()),
                             f"{name}.dcp_keep" if window is not None else output)  # (B, S, W)
            if window is not None:  # what leaves the window leaves the cache
                keep = g.op("And", keep, _within_window(g, glob, m, layer, window), outputs=[output])
            g.outputs.append(helper.make_tensor_value_info(output, BOOL, ["batch", "seq", W]))
        masked = g.op("Where", keep, g.const(0.0, np.float32), g.const(-np.inf, np.float32))  # (B, S|1, W)
        attention_bias = g.op("Unsqueeze", masked, g.const([1]))  # (B, 1, S|1, W)
        if policy is None and window is None:  # the attention wants one row a query
            attention_bias = g.op("Expand", attention_bias, glob.query_rows)  # (B, 1, S, W)
        outputs = [f"{name}.attended", m.name(m.present["key"], layer), m.name(m.present["value"], layer)]
        if m.attention:  # each query's attention probabilities (qk_output=2: after the softmax), for H2O / TOVA
            outputs.append(m.name(m.attention, layer))
            g.outputs.append(helper.make_tensor_value_info(outputs[-1], FLOAT, ["batch", H, "seq", W]))
        layer_rotary = rotary if weights.rotary is None else tables[id(weights.rotary)]
        rotates = layer_rotary[0] != ""
        attended = g.op(
            "GroupQueryAttention", qkv, "", "", m.name(m.past["key"], layer), m.name(m.past["value"], layer),
            m.name(m.past["seqlens"], layer), m.name(m.past["capacity"], layer), *layer_rotary,
            positions if rotates else "", attention_bias, outputs=outputs, domain=MS_DOMAIN,
            num_heads=H, kv_num_heads=KV, scale=weights.scale, do_rotary=int(rotates),
            rotary_interleaved=0, qk_output=2 if m.attention else 0,
        )[0]
        g.outputs += [helper.make_tensor_value_info(m.name(m.present[f], layer), FLOAT, shapes[layer][f])
                      for f in ("key", "value")]
        if policy is not None:  # k_int (B, S, r) is the new_kint output itself
            g.output(k_int, m.name(m.new_kint, layer), FLOAT, ["batch", "seq", r])
        out = blocks.linear(f"{name}.out", attended, weights.out, weights.out_bias)
        out = blocks.post_norm(f"{name}.post_attention_norm", weights.post_attention_norm, out)
        x, residual = blocks.skip_norm(f"{name}.mlp_norm", weights.mlp_norm, out, residual)
        mlp = blocks.mlp(f"{name}.mlp", x, weights)
        pending = blocks.post_norm(f"{name}.post_mlp_norm", weights.post_mlp_norm, mlp)
    final, _ = blocks.skip_norm("final_norm", spec.final_norm, pending, residual)  # (B, S, d)
    width = g.op("Shape", final, start=2, end=3)
    index = g.op("Expand", g.op("Unsqueeze", wanted, g.const([2])),
                 g.op("Concat", g.op("Shape", wanted), width, axis=0))  # (B, K, d)
    picked = g.op("GatherElements", final, index, axis=1)  # (B, K, d)
    logits = blocks.linear("lm_head", picked, spec.lm_head, spec.lm_head_bias)
    g.output(logits, m.logits, FLOAT, ["batch", "wanted", m.vocab_size])
    _order_outputs(g, m)
    return g.model(m.opset)


def _buffer_shapes(m: DecoderManifest, capacity: str) -> dict[str, list]:
    """The shapes of one layer's cache inputs, its slot capacity named `capacity`."""
    KV, D, r = m.num_kv_heads, m.head_dim, m.interaction_dim
    return {"key": ["batch", KV, capacity, D], "value": ["batch", KV, capacity, D], "kint": ["batch", r, capacity],
            "valid": ["batch", 1, capacity], "guard": ["batch", 1, capacity], "positions": ["batch", 1, capacity],
            "seqlens": ["batch"], "capacity": []}


def _order_outputs(g: GraphBuilder, m: DecoderManifest) -> None:
    """Graph outputs in the manifest's order (logits first)."""
    order = {name: i for i, name in enumerate(m.output_names())}
    g.outputs.sort(key=lambda info: order[info.name])
