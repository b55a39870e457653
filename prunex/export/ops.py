"""The `prunex` ONNX op domain (version 1): the token compaction op as a model-local function.

Each op is an `onnx.FunctionProto` whose body uses standard ONNX ops only (opset 17 by default), so a model
that holds a `prunex::Op` node and carries these functions in `model.functions` runs in a plain
`onnxruntime.InferenceSession`: ONNX Runtime inlines the body, no native code is needed. Should a native
kernel for the same op be registered later, ONNX Runtime prefers it: the body is the portable reference.

Ops (B batch, T tokens in, W packed width = largest kept count of a row, at least 1):
- `ThresholdGather`: LTP hard removal between encoder layers: a real token stays iff
  `scores > threshold` (strict, as `LTPThresholds.keep`) or it is in `keep_always` (e.g. [CLS]); the kept
  hidden states are packed in order, as `prunex.prune.encoder_forward.run_encoder(mode="hard")` does.

Packing plan (the mirror of `prunex.tensors.pack_kept`): rank = (1 - keep) * T + t,
then TopK(rank, W, smallest, sorted): kept entries first in their original order, then the dropped ones in
their order. Padding entries (valid False) therefore hold the first dropped entries of the row: deterministic,
but consumers must only read entries where valid / mask_out is True. Gathers use flat row offsets and a plain
`Gather` on axis 0, so the index tensors stay (B, W) or (B, KVH, W), never the size of the data.

The numpy reference `threshold_gather_reference` defines the exact results (padding included) the function
body must reproduce. (Decoder graphs use no prunex op since layout 3: the runtime compacts the KV cache, see
`prunex.runtime.slot_cache`; layout 2's `KVCompact` is gone.)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, parser

from prunex.format import DOMAIN, DOMAIN_VERSION, ONNX_OPSET, THRESHOLD_GATHER

# Per op: inputs and outputs in call order, each (name, shape, dtype, meaning). Shapes use the symbols of the
# module doc; dtype "float" means any floating type (the bodies are type-polymorphic), the rest are exact.
# JSON-serialisable: the exporter writes it into the manifest.
OP_SCHEMAS: dict[str, dict] = {
    THRESHOLD_GATHER: {
        "doc": "LTP hard token removal: keep real tokens with scores > threshold or keep_always, packed.",
        "inputs": [
            ("hidden", ["B", "T", "H"], "float", "hidden states of the tokens"),
            ("scores", ["B", "T"], "float", "token importance (mean attention received)"),
            ("threshold", [], "float", "the layer's threshold; any shape broadcastable to (B, T) also works"),
            ("mask", ["B", "T"], "bool", "real (present) tokens; any integer or bool type, nonzero = real"),
            ("keep_always", ["B", "T"], "bool", "tokens that stay whatever their score ([CLS]); bool or int"),
        ],
        "outputs": [
            ("hidden_out", ["B", "W", "H"], "float", "hidden states of the kept tokens packed in order"),
            ("mask_out", ["B", "W"], "bool", "True on kept tokens, False on padding"),
            ("kept_index", ["B", "W"], "int64", "index in the input (0..T-1) of each packed token"),
        ],
    },
}

_ONNX_DTYPES = {"float": TensorProto.FLOAT, "bool": TensorProto.BOOL, "int64": TensorProto.INT64}


# ---------------------------------------------------------------------------------------------------------
# Function bodies (ONNX text format, parsed by onnx.parser)
# ---------------------------------------------------------------------------------------------------------

def _pack_plan(keep: str, valid: str = "valid", lengths: str = "lengths") -> str:
    """Body lines turning a (B, T) bool tensor named `keep` into the packing plan.

    Defines: B_1d, T_1d ([1] int64), T (), `lengths` (B,), W_1d ([1]), index (B, W) original indices (kept
    first, in order), `valid` (B, W) bool, flat_index (B, W) = b * T + index (row offsets into a (B*T, ...)
    view).
    """
    return f"""
    zero = Constant <value = int64 {{0}}> ()
    one = Constant <value = int64 {{1}}> ()
    one_1d = Constant <value = int64[1] {{1}}> ()
    axis0 = Constant <value = int64[1] {{0}}> ()
    axis1 = Constant <value = int64[1] {{1}}> ()
    B_1d = Shape <start = 0, end = 1> ({keep})
    T_1d = Shape <start = 1, end = 2> ({keep})
    B = Squeeze (B_1d)
    T = Squeeze (T_1d)
    keep_i = Cast <to = 7> ({keep})                     # (B, T) int64
    {lengths} = ReduceSum <keepdims = 0> (keep_i, axis1)  # (B,)
    max_len = ReduceMax <keepdims = 1> ({lengths})        # [1]
    W_1d = Max (max_len, one_1d)                        # [1] packed width, at least 1
    W = Squeeze (W_1d)
    t = Range (zero, T, one)                            # (T,)
    dropped = Sub (one, keep_i)                         # (B, T) 1 where dropped
    dropped_T = Mul (dropped, T)                        # (B, T)
    rank = Add (dropped_T, t)                           # (B, T) kept < T <= dropped, distinct in a row
    rank_top, index = TopK <axis = 1, largest = 0, sorted = 1> (rank, W_1d)  # (B, W)
    w = Range (zero, W, one)                            # (W,)
    w_row = Unsqueeze (w, axis0)                        # (1, W)
    lengths_col = Unsqueeze ({lengths}, axis1)            # (B, 1)
    {valid} = Less (w_row, lengths_col)                   # (B, W)
    rows = Range (zero, B, one)                         # (B,)
    row_base = Mul (rows, T)                            # (B,)
    row_base_col = Unsqueeze (row_base, axis1)          # (B, 1)
    flat_index = Add (index, row_base_col)              # (B, W) into a (B*T, ...) view
    """


_HEADER = '<domain: "{domain}", opset_import: ["" : {opset}], doc_string: "{doc}">'

_THRESHOLD_GATHER_BODY = (
    "ThresholdGather (hidden, scores, threshold, mask, keep_always) => (hidden_out, mask_out, kept_index) {"
    + """
    thr = CastLike (threshold, scores)
    above = Greater (scores, thr)                       # (B, T) strict, as LTPThresholds.keep
    always = Cast <to = 9> (keep_always)                # (B, T) bool
    wanted = Or (above, always)
    real = Cast <to = 9> (mask)                         # (B, T) bool
    stay = And (wanted, real)                           # (B, T)
"""
    + _pack_plan("stay")
    + """
    hidden_flat = Flatten <axis = 2> (hidden)           # (B*T, H)
    hidden_out = Gather <axis = 0> (hidden_flat, flat_index)  # (B, W, H)
    mask_out = Identity (valid)                         # (B, W)
    kept_index = Identity (index)                       # (B, W)
}
"""
)

_BODIES = {THRESHOLD_GATHER: _THRESHOLD_GATHER_BODY}


def _function_proto(op_name: str, opset: int, body: str) -> onnx.FunctionProto:
    """Parse one op's body into a FunctionProto of the prunex domain."""
    header = _HEADER.format(domain=DOMAIN, opset=opset, doc=OP_SCHEMAS[op_name]["doc"])
    return parser.parse_function(header + "\n" + body)


def function_protos(onnx_opset: int = ONNX_OPSET) -> list[onnx.FunctionProto]:
    """The FunctionProtos of every prunex op, to append to `model.functions`.

    `onnx_opset` is the standard opset the bodies import: pass the model's own (17 or later) so the functions
    and the graph agree.
    """
    if onnx_opset < ONNX_OPSET:
        raise ValueError(f"the prunex ops need ONNX opset {ONNX_OPSET} or later, got {onnx_opset}")
    return [_function_proto(name, onnx_opset, _BODIES[name]) for name in OP_SCHEMAS]


def opset_imports(onnx_opset: int = ONNX_OPSET) -> list[onnx.OperatorSetIdProto]:
    """The opset imports a model using the prunex ops needs: the standard domain and prunex v1."""
    return [helper.make_opsetid("", onnx_opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)]


def make_node(op_name: str, inputs: list[str], outputs: list[str], name: str | None = None) -> onnx.NodeProto:
    """A `prunex::op_name` node; inputs and outputs in the order of `OP_SCHEMAS[op_name]`.

    Every input is required; an output the graph does not need may be named "" (ONNX Runtime accepts it).
    """
    if op_name not in OP_SCHEMAS:
        raise ValueError(f"unknown prunex op {op_name!r}; known: {sorted(OP_SCHEMAS)}")
    schema = OP_SCHEMAS[op_name]
    if len(inputs) != len(schema["inputs"]) or len(outputs) != len(schema["outputs"]):
        raise ValueError(
            f"{op_name} takes {len(schema['inputs'])} inputs and {len(schema['outputs'])} outputs "
            f"({[io[0] for io in schema['inputs']]} -> {[io[0] for io in schema['outputs']]}), "
            f"got {len(inputs)} and {len(outputs)}"
        )
    return helper.make_node(op_name, list(inputs), list(outputs), name=name, domain=DOMAIN)


def standalone_model(
    op_name: str, input_types: dict[str, int] | None = None, onnx_opset: int = ONNX_OPSET
) -> onnx.ModelProto:
    """A model whose graph is one `prunex::op_name` node, graph inputs/outputs named as in the schema.

    input_types: override the element type of some inputs (TensorProto enums), e.g.
    {"mask": TensorProto.INT64} or {"hidden": TensorProto.FLOAT16}; outputs follow their inputs' type.
    """
    if op_name not in OP_SCHEMAS:
        raise ValueError(f"unknown prunex op {op_name!r}; known: {sorted(OP_SCHEMAS)}")
    schema, overrides = OP_SCHEMAS[op_name], dict(input_types or {})
    in_types = {io[0]: overrides.get(io[0], _ONNX_DTYPES[io[2]]) for io in schema["inputs"]}
    source = {"hidden_out": "hidden"}
    inputs = [helper.make_tensor_value_info(io[0], in_types[io[0]], io[1]) for io in schema["inputs"]]
    outputs = [
        helper.make_tensor_value_info(io[0], in_types.get(source.get(io[0], ""), _ONNX_DTYPES[io[2]]), io[1])
        for io in schema["outputs"]
    ]
    names_in, names_out = [io[0] for io in schema["inputs"]], [io[0] for io in schema["outputs"]]
    node = make_node(op_name, names_in, names_out, op_name)
    graph = helper.make_graph([node], f"prunex_{op_name}", inputs, outputs)
    model = helper.make_model(
        graph, opset_imports=opset_imports(onnx_opset), functions=function_protos(onnx_opset)
    )
    model.ir_version = 10  # functions + opset 17..21, loadable by onnxruntime >= 1.20
    return model


# ---------------------------------------------------------------------------------------------------------
# numpy references (exact: the function bodies must reproduce them bit for bit, padding included)
# ---------------------------------------------------------------------------------------------------------

def pack_plan_reference(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, T) bool -> index (B, W) int64 (kept first in order, then dropped), valid (B, W), lengths (B,)."""
    keep = np.asarray(keep, dtype=bool)
    lengths = keep.sum(-1).astype(np.int64)  # (B,)
    width = max(int(lengths.max(initial=0)), 1)
    index = np.argsort(~keep, axis=-1, kind="stable")[:, :width].astype(np.int64)  # (B, W)
    valid = np.arange(width)[None, :] < lengths[:, None]  # (B, W)
    return index, valid, lengths


def threshold_gather_reference(
    hidden: np.ndarray, scores: np.ndarray, threshold, mask: np.ndarray, keep_always: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy ThresholdGather: (hidden_out, mask_out, kept_index); see OP_SCHEMAS."""
    threshold = np.asarray(threshold, dtype=scores.dtype)
    stay = ((scores > threshold) | keep_always.astype(bool)) & mask.astype(bool)  # (B, T)
    index, valid, _ = pack_plan_reference(stay)
    hidden_out = np.take_along_axis(hidden, index[:, :, None], axis=1)  # (B, W, H)
    return hidden_out, valid, index
