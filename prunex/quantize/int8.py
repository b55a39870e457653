"""`prunex quantize`: int8 (or 4-bit) weights and an int8 K/V cache for an exported dir, the cost measured
against fp32, bounded.

- dynamic: MatMul weights int8 (or 4-bit, `bits=4`) and embedding tables int8, activations quantized to int8
  at run time (ONNX Runtime's CPU int8 kernels). The MatMuls between activations (attention) stay fp32.
- static: QDQ int8 for weights and activations with ranges calibrated on real text / examples, the format
  CUDA / TensorRT backends take.
- none: the weights stay fp32 (with `kv` int8: the cache alone, its cost measured on its own).
- kv int8 (decoders, any mode): the slot buffers stored as int8, per-channel scales calibrated on real text
  (`prunex.quantize.kv_cache`); a held token takes a quarter of its fp32 bytes.

The prunex ops (functions in the `prunex` domain) are not quantized and survive. Before writing, the pass
measures perplexity (decoder, held-out Wikipedia) or accuracy (encoder, the task's test split) of both the
fp32 source and the quantized result on the same data, and the size on disk; if the loss passes the bound the
dir is not written unless `accept_cost`.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from prunex.errors import PrunexError
from prunex.export.folder import prepare_out, write_atomically
from prunex.format import (
    DOMAIN,
    KV_CACHE_TYPES,
    MANIFEST_FILE,
    manifest_kind,
    read_encoder_manifest,
    read_manifest,
    write_manifest,
)
from prunex.quantize.kv_cache import calibrate_kv_scales, int8_kv_graph, kv_bytes_per_token
from prunex.quantize.passes import untie_shared_weights

MODES = ("dynamic", "static", "none")
WEIGHT_BITS = (8, 4)  # dynamic: MatMulNBits' weight widths
QUANTIZED_OPS = ["MatMul", "Gather"]
BLOCK_SIZES = (16, 32, 64, 128, 256)  # what MatMulNBits accepts
ACTIVATIONS = {"dynamic": "int8 dynamic", "static": "int8 static (QDQ)", "none": "float32"}
MIN_TABLE = 4096  # dynamic: embedding tables smaller than this stay fp32
KV_CALIBRATION_CONTEXT = 512  # tokens per calibration window of the K/V scales

logger = logging.getLogger(__name__)


@dataclass
class QuantizeConfig:
    """Settings of one quantization pass."""

    mode: str = "dynamic"  # dynamic | static | none (weights stay fp32)
    kv: str = "float32"  # decoders: the K/V cache's type, float32 or int8
    bits: int = 8  # dynamic: weight bits of the MatMuls, 8 or 4 (static is int8)
    block_size: int | None = None  # dynamic: input channels per weight / activation scale (None: `block`)
    per_channel: bool = True  # static: one weight scale per output column (better accuracy, same speed)
    keep_fp32: list[str] = field(default_factory=list)  # substrings of node or weight names left in fp32
    #                                                     (e.g. "lm_head", "mlp.down": `kept_fp32`)
    calibration_text: str = "wikipedia"  # static, decoders: packaged text or a UTF-8 file (training split)
    calibration_samples: int = 8  # static: windows (decoder) or batches of 8 texts (encoder)
    task: str | None = None  # encoders: the labelled task to measure accuracy on (bbc, rotten-tomatoes, file)
    eval_windows: int = 8  # decoders: held-out windows for the perplexity check
    eval_context: int | None = None  # decoders: tokens per window (None: `context`)
    eval_limit: int | None = None  # encoders: examples of the test split (None: all)
    max_ppl_increase: float = 0.03  # refuse when the quantized perplexity > fp32 x (1 + this)
    max_accuracy_drop: float = 0.01  # refuse when the quantized accuracy < fp32 accuracy - this
    accept_cost: bool = False  # write even when a bound is exceeded
    overwrite: bool = False  # replace a non-empty out dir
    threads: int | None = None

    def check(self) -> None:
        if self.mode not in MODES:
            raise PrunexError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.block_size is not None and self.block_size not in BLOCK_SIZES:
            raise PrunexError(f"--block-size must be one of {', '.join(map(str, BLOCK_SIZES))}, not {self.block_size}")
        if self.bits not in WEIGHT_BITS:
            raise PrunexError(f"--bits must be 8 or 4, not {self.bits}")
        if self.bits != 8 and self.mode != "dynamic":
            raise PrunexError("--bits 4 needs --mode dynamic (static quantization is int8)")
        if self.kv not in KV_CACHE_TYPES:
            raise PrunexError(f"--kv must be one of {', '.join(KV_CACHE_TYPES)}, not {self.kv!r}")
        if self.mode == "none" and self.kv == "float32":
            raise PrunexError("--mode none quantizes nothing: add --kv int8 (the K/V cache alone)")

    @property
    def block(self) -> int:
        """The block size asked for: `block_size`, else 128 for 8-bit weights and 32 for 4-bit. Smaller is more
        accurate, larger is faster: on SmolLM2, 8 bits at 128 decode x1.38 vs fp32 where 32 gave x1.30, for +0.98%
        vs +0.48% perplexity; 4 bits cost +70% at 128, +29% at 32."""
        return self.block_size or (128 if self.bits == 8 else 32)

    @property
    def context(self) -> int:
        """Tokens per window of the perplexity check: `eval_context`, else 512, or 2048 with an int8 cache. The
        runtime prefills 512-token chunks with fp32 attention inside each chunk (`kv_cache`), so the cache's
        int8 entries are read only by later chunks (and decode steps): a one-chunk check would not see them."""
        return self.eval_context or (2048 if self.kv == "int8" else 512)

    def describe(self) -> str:
        """What the pass quantizes, in words: "int8 weights", "an int8 K/V cache", or both."""
        parts = ([] if self.mode == "none" else [f"{self.weights} weights"]) + (
            [f"an {self.kv} K/V cache"] if self.kv != "float32" else [])
        return " and ".join(parts)

    @property
    def weights(self) -> str:
        """The weights' type as the manifest records it: int8, int4 or float32 (mode none)."""
        return "float32" if self.mode == "none" else f"int{self.bits}"


def _size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())


def block_size_for(model: onnx.ModelProto, requested: int) -> int:
    """`requested`, or less when a weight MatMul has fewer input channels: ONNX Runtime's MatMulNBits kernels
    need a block no wider than K (block 128 on the tiny test model, K = 64, aborts the process). Powers of two,
    at least 16."""
    weights = {init.name: init for init in model.graph.initializer}
    inputs = [weights[n.input[1]].dims[0] for n in model.graph.node
              if n.op_type == "MatMul" and n.input[1] in weights and len(weights[n.input[1]].dims) == 2]
    block = requested
    while inputs and block > min(BLOCK_SIZES) and block > min(inputs):
        block //= 2
    return block


def _quantize_graph(source: Path, target: Path, config: QuantizeConfig, kind: str) -> tuple[list[str], int | None]:
    """Write the quantized graph of `source` (a model.onnx) to `target`; returns the tables untied first and
    the block size used (dynamic; None for static and none)."""
    if config.mode == "none":
        shutil.copy2(source, target)
        return [], None
    model = onnx.load(str(source))
    untied = untie_shared_weights(model)
    prepared = target.with_name("fp32-prepared.onnx")
    onnx.save(model, str(prepared))
    block = None
    if config.mode == "dynamic":
        block = block_size_for(model, config.block)
        _dynamic(model, prepared, target, config.keep_fp32, block, config.bits)
    else:
        _static(model, prepared, target, config, kind, source.parent)
    prepared.unlink()
    quantized = onnx.load(str(target), load_external_data=False)
    if sum(n.domain == DOMAIN for n in quantized.graph.node) != sum(n.domain == DOMAIN for n in model.graph.node):
        raise PrunexError("internal: quantization lost prunex nodes")
    return untied, block


def _dynamic(model: onnx.ModelProto, prepared: Path, target: Path, keep_fp32: list[str], block_size: int,
             bits: int) -> None:
    """Weight MatMuls -> MatMulNBits (`bits` 8 or 4, one scale per `block_size` input channels, activations
    quantized to int8 per block at run time: accuracy_level 4, ONNX Runtime's int8 dot-product kernels);
    embedding Gathers -> int8 table (DynamicQuant).

    ONNX Runtime's per-tensor dynamic MatMul quantization (DynamicQuantizeMatMul) was tried first: SmolLM2's
    MLP down-projection input has outlier channels, and one scale for the whole activation tensor cost +68%
    perplexity; blockwise activation scales cost +0.2%.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    opset = {o.domain: o.version for o in model.opset_import}
    settings = {"block_size": block_size, "is_symmetric": True, "accuracy_level": 4, "bits": bits}
    algo = DefaultWeightOnlyQuantConfig(**settings, op_types_to_quantize=("MatMul",),
                                        quant_format=QuantFormat.QOperator)
    fp32 = [n.name for n in model.graph.node if kept_fp32(n, keep_fp32)]
    quantizer = MatMulNBitsQuantizer(onnx.load(str(prepared)), algo_config=algo, op_types_to_quantize=("MatMul",),
                                     nodes_to_exclude=fp32, **settings)
    quantizer.process()
    matmuls = quantizer.model.model
    for entry in matmuls.opset_import:  # the quantizer raises the standard opset; the graph's ops are unchanged
        if entry.domain in ("", "ai.onnx") and "" in opset:
            entry.version = opset[""]
    onnx.save(matmuls, str(prepared))
    weights = {init.name for init in matmuls.graph.initializer}
    tables = [n.name for n in matmuls.graph.node if n.op_type == "Gather" and n.input[0] in weights
              and _size_of(matmuls, n.input[0]) >= MIN_TABLE and n.name not in fp32]
    if not tables:
        onnx.save(matmuls, str(target))
        return
    quantize_dynamic(prepared, target, op_types_to_quantize=["Gather"], nodes_to_quantize=tables,
                     weight_type=QuantType.QInt8, per_channel=False)


def _size_of(model: onnx.ModelProto, name: str) -> int:
    init = next(i for i in model.graph.initializer if i.name == name)
    size = 1
    for dim in init.dims:
        size *= dim
    return size


def _static(model: onnx.ModelProto, prepared: Path, target: Path, config: QuantizeConfig, kind: str,
            directory: Path) -> None:
    """QDQ int8 for the weight MatMuls and embedding Gathers, activation ranges calibrated on real inputs."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from prunex.quantize.calibration import FeedReader, decoder_feeds, encoder_feeds

    feeds = (decoder_feeds(directory, config.calibration_text, config.calibration_samples) if kind == "decoder"
             else encoder_feeds(directory, _task(directory, config), 8 * config.calibration_samples))
    quantize_static(prepared, target, FeedReader(feeds), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=QUANTIZED_OPS, per_channel=config.per_channel,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    nodes_to_quantize=[n.name for n in weight_nodes(model) if not kept_fp32(n, config.keep_fp32)],
                    extra_options={"MatMulConstBOnly": True})


def weight_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes to quantize: MatMuls by a weight (initializer) and Gathers from a table (embeddings).

    Static quantization does not honour MatMulConstBOnly: naming the nodes keeps the attention MatMuls
    (query x key, probabilities x value) in fp32; quantizing them cost 80% of the top-1 tokens of a tiny model.
    """
    weights = {init.name for init in model.graph.initializer}
    return [n for n in model.graph.node
            if (n.op_type == "MatMul" and n.input[1] in weights) or (n.op_type == "Gather" and n.input[0] in weights)]


def kept_fp32(node: onnx.NodeProto, keep: list[str]) -> bool:
    """Whether `node` stays fp32: one of `keep` is in its name or in one of its inputs' (the fused decoder's
    nodes have generic names; its weights are named after the model: `lm_head.weight`, `layers.3.mlp.down.weight`)."""
    return any(k in name for k in keep for name in (node.name, *node.input))


def _task(directory: Path, config: QuantizeConfig) -> str:
    """The task an encoder's accuracy is measured on: --task, else the one its checkpoint was trained on."""
    from prunex.eval.exported import training_task

    task = config.task or training_task(directory)
    if task:
        return task
    raise PrunexError("give --task: the labelled set to measure the int8 accuracy on (bbc, rotten-tomatoes, file)")


def _int8_cache(source: Path, graph_file: Path, manifest, config: QuantizeConfig) -> None:
    """Rewrite `graph_file` for an int8 K/V cache, its scales calibrated by the fp32 graph of `source` on
    the training split of the calibration text; `manifest` then says so."""
    from prunex.data.text import split_text, token_windows
    from prunex.runtime.runtime import load_tokenizer

    length = min(KV_CALIBRATION_CONTEXT, (manifest.max_positions or KV_CALIBRATION_CONTEXT + 1) - 1)
    windows = token_windows(load_tokenizer(source), split_text(config.calibration_text, "train"), length,
                            config.calibration_samples)
    scales = calibrate_kv_scales(source, windows, config.threads)
    model = onnx.load(str(graph_file))
    int8_kv_graph(model, manifest, scales)
    onnx.save(model, str(graph_file))
    manifest.kv_cache = "int8"


def _measure(directory: Path, kind: str, config: QuantizeConfig, windows) -> dict:
    """Perplexity (decoder) or accuracy (encoder) of an exported dir."""
    from prunex.eval.exported import exported_accuracy, exported_perplexity

    if kind == "decoder":
        return exported_perplexity(directory, windows, config.threads, show_progress=False).to_dict()
    return exported_accuracy(directory, _task(directory, config), "test", config.eval_limit, config.threads).to_dict()


def quantize_dir(source: str | Path, out: str | Path, config: QuantizeConfig, progress=logger.info) -> dict:
    """Quantize the exported dir `source` into `out`; returns the report (and writes nothing on refusal)."""
    config.check()
    source, out = Path(source), Path(out)
    kind = manifest_kind(source) if (source / MANIFEST_FILE).is_file() else None
    if kind is None:
        raise PrunexError(f"{source} is not an exported dir (no {MANIFEST_FILE}): run `prunex export` first")
    manifest = read_manifest(source) if kind == "decoder" else read_encoder_manifest(source)
    if manifest.quantization:
        raise PrunexError(f"{source} is already quantized ({manifest.quantization.get('mode')}): start from fp32")
    if config.kv != "float32" and kind != "decoder":
        raise PrunexError("--kv quantizes a decoder's K/V cache; an encoder has none")
    prepare_out(out, config.overwrite)
    windows = None
    if kind == "decoder":
        from prunex.data.text import split_text, token_windows
        from prunex.runtime.runtime import load_tokenizer

        windows = token_windows(load_tokenizer(source), split_text("wikipedia", "test"), config.context,
                                config.eval_windows)

    def fill(tmp: Path) -> dict:
        started = time.perf_counter()
        progress(f"quantizing {source} ({config.mode} {config.weights}) ...")
        untied, block = _quantize_graph(source / manifest.model_file, tmp / manifest.model_file, config, kind)
        if block is not None and block != config.block:
            progress(f"block size {block}, not {config.block}: the model has weights with fewer input channels")
        if config.kv == "int8":
            progress(f"calibrating the int8 K/V cache on {config.calibration_samples} windows of "
                     f"{config.calibration_text} ...")
            _int8_cache(source, tmp / manifest.model_file, manifest, config)
        for file in source.iterdir():
            if file.is_file() and file.name not in (manifest.model_file, MANIFEST_FILE):
                shutil.copy2(file, tmp / file.name)
        manifest.quantization = {"mode": config.mode, "weights": config.weights, "kept_fp32": config.keep_fp32,
                                 "activations": ACTIVATIONS[config.mode], "kv": config.kv,
                                 "per_channel": config.per_channel, "ops": QUANTIZED_OPS, "source": str(source),
                                 "untied": untied, "block_size": block}
        write_manifest(tmp, manifest)
        progress(f"measuring the fp32 source and the result ({config.weights} weights, {config.kv} K/V) "
                 "on the same data ...")
        before, after = _measure(source, kind, config, windows), _measure(tmp, kind, config, windows)
        report = {"kind": kind, "mode": config.mode, "weights": config.weights, "kv": config.kv, "fp32": before,
                  "quantized": after, "fp32_bytes": _size(source), "quantized_bytes": _size(tmp), "seconds": 0.0}
        if kind == "decoder":  # what one held token costs, all layers
            report["kv_bytes_per_token"] = {"fp32": kv_bytes_per_token(manifest, "float32"),
                                            "quantized": kv_bytes_per_token(manifest, config.kv)}
        report["size_ratio"] = report["fp32_bytes"] / report["quantized_bytes"]
        if kind == "decoder":
            report["ppl_increase"] = after["perplexity"] / before["perplexity"] - 1
            exceeded = report["ppl_increase"] > config.max_ppl_increase
            bound = f"perplexity +{100 * report['ppl_increase']:.2f}% > --max-ppl-increase {config.max_ppl_increase}"
        else:
            report["accuracy_drop"] = before["accuracy"] - after["accuracy"]
            exceeded = report["accuracy_drop"] > config.max_accuracy_drop
            bound = f"accuracy -{report['accuracy_drop']:.4f} > --max-accuracy-drop {config.max_accuracy_drop}"
        report["seconds"] = time.perf_counter() - started
        report["bound_exceeded"] = exceeded
        if exceeded and not config.accept_cost:
            message = f"{config.describe()} cost too much: {bound}; nothing written (--accept-cost writes anyway)"
            raise QuantizationRefused(message, report)
        manifest.quantization["cost"] = {k: v for k, v in report.items() if k not in ("kind", "mode", "weights")}
        write_manifest(tmp, manifest)
        return report

    return write_atomically(out, fill)


class QuantizationRefused(PrunexError):
    """The quantized result lost more than the bound allows; `report` has the figures."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report

