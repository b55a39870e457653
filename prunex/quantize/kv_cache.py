"""An int8 K/V cache: the slot buffers stored as int8, written and read by GroupQueryAttention itself.

ONNX Runtime's GroupQueryAttention (1.32, CPU) quantizes the new keys and values as it writes them into the cache
and dequantizes the past as it reads it, given static fp32 scales (`k_scale`, `v_scale`, inputs 12 and 13) and
`kv_cache_bit_width` 8 with `k_quant_type` / `v_quant_type` PER_CHANNEL: one scale per K/V head and channel,
(1, KV, 1, D). The scales are the largest magnitude each channel reaches over calibration text (run by the fp32
graph itself, reading its cache), divided by 127. Keys are stored after RoPE, which rotates each pair of channels
(i, i + D/2) by an angle that grows with the position: a pair's magnitude moves between its two channels, so
calibration text shorter than the contexts served misses where a slow pair's magnitude lands. Both channels of a
pair therefore get the pair's largest norm, which no rotation changes (calibrated on 512-token windows, SmolLM2
at 2048 tokens lost +4.6% perplexity with per-channel maxima, +0.07% with pair norms; 4 held-out windows).

Per channel, not per tensor: a few key channels are an order of magnitude larger than the rest (SmolLM2), and one
scale for all of them would leave the others a handful of levels. The runtime's cache manager allocates int8
buffers when the manifest says `kv_cache: int8`, and compaction moves the int8 bytes as it moved the floats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from prunex.errors import PrunexError
from prunex.format import DecoderManifest

_SCALE_INPUTS = 12  # GroupQueryAttention's k_scale, v_scale are inputs 12 and 13 (11 is head_sink)
INT8_MAX = 127


def calibrate_kv_scales(directory: Path, windows: torch.Tensor, threads: int | None = None) -> dict[str, np.ndarray]:
    """Per-channel scales of the keys and values the fp32 graph in `directory` writes over (N, T) token windows:
    {"key": (L, KV, D), "value": (L, KV, D)} float32, each channel's largest magnitude / 127."""
    from prunex.runtime.engine import DecoderEngine

    engine = DecoderEngine(directory, device="cpu", threads=threads)
    m = engine.manifest
    largest = {f: np.zeros((m.num_layers, m.num_kv_heads, m.head_dim), np.float32) for f in ("key", "value")}
    for window in windows:
        _, cache = engine.run_prompt(window.tolist())
        for layer in range(m.num_layers):
            filled = int(cache.fill[layer, 0])  # slots 0 .. fill - 1 hold entries the graph wrote (kept or not)
            for f in largest:
                written = cache.layer_view(f, layer)[0, :, :filled]  # (KV, fill, D)
                magnitude = written.abs() if f == "value" else _pair_norms(written)
                np.maximum(largest[f][layer], magnitude.amax(1).numpy(), out=largest[f][layer])
    return {f: np.maximum(values, 1e-6) / INT8_MAX for f, values in largest.items()}


def _pair_norms(keys: torch.Tensor) -> torch.Tensor:
    """(KV, N, D) keys -> (KV, N, D): each channel's value replaced by the norm of its RoPE pair (i, i + D/2)."""
    half = keys.shape[-1] // 2
    norms = torch.hypot(keys[..., :half], keys[..., half:])  # (KV, N, D/2)
    return torch.cat([norms, norms], -1)


def int8_kv_graph(model: onnx.ModelProto, manifest: DecoderManifest, scales: dict[str, np.ndarray]) -> None:
    """Rewrite `model` (the fused decoder graph) in place so every layer's cache is int8 with `scales`
    (`calibrate_kv_scales`, stored as initializers (1, KV, 1, D)); the past / present key and value of the
    graph's io become int8.

    Each layer's GroupQueryAttention becomes an `If` on the step's length. A decode step (one new token a row)
    runs the op's own int8 cache: it reads a quarter of the bytes (batch 8 over 2048 slots: 0.87 ms a layer
    against 1.43 in fp32). A prefill chunk dequantizes the past, runs the fp32 op and quantizes the present
    again, because the op's int8 path is ~3x slower than fp32 on chunks (512 new tokens over 2048 slots: 52 ms
    a layer against 15; the round trip costs 18). Requantizing the past returns its int8 values exactly."""
    m = manifest
    layer_of = {m.name(m.past["key"], layer): layer for layer in range(m.num_layers)}
    graph = model.graph
    ids = m.inputs["input_ids"]
    graph.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), f"kv_cache.{n}")
                              for n, v in (("lowest", -INT8_MAX), ("highest", INT8_MAX))])
    graph.initializer.append(numpy_helper.from_array(np.array(1, np.int64), "kv_cache.one"))
    decoding = [helper.make_node("Shape", [ids], ["kv_cache.seq"], start=1, end=2),
                helper.make_node("Squeeze", ["kv_cache.seq"], ["kv_cache.seq_scalar"]),
                helper.make_node("Equal", ["kv_cache.seq_scalar", "kv_cache.one"], ["kv_cache.decoding"])]
    nodes, rewritten = list(decoding), 0
    for node in graph.node:
        if node.op_type != "GroupQueryAttention" or len(node.input) < 4 or node.input[3] not in layer_of:
            nodes.append(node)
            continue
        layer = layer_of[node.input[3]]
        names = []
        for f in ("key", "value"):
            name = f"layers.{layer}.{f}_scale"
            table = scales[f][layer].reshape(1, m.num_kv_heads, 1, m.head_dim).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(table, name))
            names.append(name)
        nodes.append(_attention_by_step(node, "kv_cache.decoding", *names))
        rewritten += 1
    if rewritten != m.num_layers:
        raise PrunexError(f"internal: found {rewritten} GroupQueryAttention nodes over the cache, not {m.num_layers}")
    del graph.node[:]
    graph.node.extend(nodes)
    cache_io = {m.name(t[f], layer) for t in (m.past, m.present) for f in ("key", "value")
                for layer in range(m.num_layers)}
    for info in [*graph.input, *graph.output]:
        if info.name in cache_io:
            info.type.tensor_type.elem_type = TensorProto.INT8


def _attention_by_step(node: onnx.NodeProto, decoding: str, key_scale: str, value_scale: str) -> onnx.NodeProto:
    """An `If` with `node`'s inputs and outputs (present key / value int8): decode steps run `node` over the int8
    cache; prefill chunks run it in fp32 between a dequantization of the past and a quantization of the present."""
    inputs = list(node.input) + [""] * max(0, _SCALE_INPUTS - len(node.input))
    attended, present_key, present_value, *probabilities = node.output
    attributes = list(node.attribute)

    def out(name: str, branch: str) -> str:
        return f"{name}.{branch}"

    int8 = helper.make_node(node.op_type, inputs[:_SCALE_INPUTS] + [key_scale, value_scale],
                            [out(o, "int8") for o in node.output], domain=node.domain,
                            kv_cache_bit_width=8, k_quant_type="PER_CHANNEL", v_quant_type="PER_CHANNEL")
    int8.attribute.extend(attributes)
    prefill, past = [], {}
    for index, scale in ((3, key_scale), (4, value_scale)):  # (B, KV, W, D) int8 -> float
        real = out(inputs[index], "float")
        prefill += [helper.make_node("Cast", [inputs[index]], [real + ".cast"], to=TensorProto.FLOAT),
                    helper.make_node("Mul", [real + ".cast", scale], [real])]
        past[index] = real
    fp32_inputs = [past.get(i, name) for i, name in enumerate(node.input)]
    fp32_outputs = [out(attended, "fp32"), out(present_key, "fp32"), out(present_value, "fp32"),
                    *[out(o, "fp32") for o in probabilities]]
    fp32 = helper.make_node(node.op_type, fp32_inputs, fp32_outputs, domain=node.domain)
    fp32.attribute.extend(attributes)
    prefill.append(fp32)
    for present, scale in ((present_key, key_scale), (present_value, value_scale)):
        real, levels = out(present, "fp32"), out(present, "levels")
        prefill += [helper.make_node("Div", [real, scale], [levels + ".scaled"]),
                    helper.make_node("Round", [levels + ".scaled"], [levels + ".rounded"]),
                    helper.make_node("Clip", [levels + ".rounded", "kv_cache.lowest", "kv_cache.highest"],
                                     [levels]),
                    helper.make_node("Cast", [levels], [out(present, "int8_prefill")], to=TensorProto.INT8)]
    types = [TensorProto.FLOAT, TensorProto.INT8, TensorProto.INT8] + [TensorProto.FLOAT] * len(probabilities)
    decode_outputs = [out(o, "int8") for o in node.output]
    prefill_outputs = [out(attended, "fp32"), out(present_key, "int8_prefill"), out(present_value, "int8_prefill"),
                       *[out(o, "fp32") for o in probabilities]]
    name = node.name or attended

    def branch(body: list[onnx.NodeProto], tag: str, outputs: list[str]) -> onnx.GraphProto:
        return helper.make_graph(body, f"{name}.{tag}", [],
                                 [helper.make_tensor_value_info(o, t, None) for o, t in zip(outputs, types)])

    return helper.make_node("If", [decoding], list(node.output), then_branch=branch([int8], "decode", decode_outputs),
                            else_branch=branch(prefill, "prefill", prefill_outputs))


def kv_bytes_per_token(manifest: DecoderManifest, kv_cache: str) -> int:
    """Bytes one token's keys and values take over all layers in a cache of type `kv_cache`."""
    return 2 * manifest.num_layers * manifest.num_kv_heads * manifest.head_dim * np.dtype(kv_cache).itemsize
