"""The prunex ONNX ops (FunctionProtos) run in plain ONNX Runtime and match numpy and torch bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from prunex.export import ops
from prunex.prune.kv_cache import LayerCache
from prunex.prune.ltp import LTPConfig, LTPThresholds
from prunex.tensors import pack_kept

B, KVH, T, D, R, H = 3, 2, 9, 4, 5, 6


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def kv_session() -> ort.InferenceSession:
    return _session(ops.standalone_model(ops.KV_COMPACT))


@pytest.fixture(scope="module")
def tg_session() -> ort.InferenceSession:
    return _session(ops.standalone_model(ops.THRESHOLD_GATHER, {"mask": TensorProto.INT64}))


def _kv_inputs(keep: np.ndarray, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    b, t = keep.shape
    return {
        "K": rng.standard_normal((b, KVH, t, D)).astype(dtype),
        "V": rng.standard_normal((b, KVH, t, D)).astype(dtype),
        "K_int": rng.standard_normal((b, t, R)).astype(dtype),
        "keep": keep,
        "positions": rng.permutation(b * t).reshape(b, t).astype(np.int64),
    }


def _assert_all_equal(got: list[np.ndarray], want: tuple[np.ndarray, ...]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


def _keep_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    mixed = rng.random((B, T)) < 0.5
    mixed[0, :] = True  # rows with different counts: full, random, one entry
    mixed[2, :] = False
    mixed[2, 4] = True
    one_row_empty = rng.random((B, T)) < 0.6
    one_row_empty[1] = False
    return {
        "random": rng.random((B, T)) < 0.5,
        "all_kept": np.ones((B, T), dtype=bool),
        "none_kept": np.zeros((B, T), dtype=bool),
        "one_row_empty": one_row_empty,
        "different_counts": mixed,
    }


# ---------------------------------------------------------------------------------------------------------
# The model: well formed, custom domain, functions attached, loads in ORT
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op_name", sorted(ops.OP_SCHEMAS))
def test_standalone_model_is_valid_and_loads(op_name):
    model = ops.standalone_model(op_name)
    onnx.checker.check_model(model, full_check=True)
    assert [(n.domain, n.op_type) for n in model.graph.node] == [("prunex", op_name)]
    assert {(f.domain, f.name) for f in model.functions} == {("prunex", name) for name in ops.OP_SCHEMAS}
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 17), ("prunex", 1)}
    session = _session(model)
    schema = ops.OP_SCHEMAS[op_name]
    assert [i.name for i in session.get_inputs()] == [io[0] for io in schema["inputs"]]
    assert [o.name for o in session.get_outputs()] == [io[0] for io in schema["outputs"]]


def test_function_bodies_use_standard_ops_only():
    for function in ops.function_protos():
        assert function.domain == "prunex" and function.doc_string
        assert {(o.domain, o.version) for o in function.opset_import} == {("", 17)}
        assert all(node.domain == "" for node in function.node)
        schema = ops.OP_SCHEMAS[function.name]
        assert list(function.input) == [io[0] for io in schema["inputs"]]
        assert list(function.output) == [io[0] for io in schema["outputs"]]


def test_make_node_checks_the_op():
    with pytest.raises(ValueError, match="unknown prunex op"):
        ops.make_node("Nope", ["a"], ["b"])
    with pytest.raises(ValueError, match="takes 5 inputs"):
        ops.make_node(ops.KV_COMPACT, ["K", "V"], ["K_out"])
    with pytest.raises(ValueError, match="opset 17 or later"):
        ops.function_protos(16)


# ---------------------------------------------------------------------------------------------------------
# KVCompact
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(_keep_cases()))
def test_kv_compact_matches_numpy(kv_session, case):
    keep = _keep_cases()[case]
    feed = _kv_inputs(keep)
    got = kv_session.run(None, feed)
    _assert_all_equal(got, ops.kv_compact_reference(**feed))
    K_out, V_out, K_int_out, valid, lengths, positions_out = got
    np.testing.assert_array_equal(lengths, keep.sum(-1))
    assert K_out.shape[2] == max(int(keep.sum(-1).max()), 1)
    for b in range(B):  # kept entries packed in order: the plain boolean selection
        n = int(lengths[b])
        assert valid[b, :n].all() and not valid[b, n:].any()
        np.testing.assert_array_equal(K_out[b, :, :n], feed["K"][b][:, keep[b]])
        np.testing.assert_array_equal(V_out[b, :, :n], feed["V"][b][:, keep[b]])
        np.testing.assert_array_equal(K_int_out[b, :n], feed["K_int"][b][keep[b]])
        np.testing.assert_array_equal(positions_out[b, :n], feed["positions"][b][keep[b]])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_kv_compact_single_entry_fast_path_matches_numpy(dtype):
    """T = 1 (a decode step's new token) takes the If branch that skips the packing plan: same results."""
    model = ops.standalone_model(ops.KV_COMPACT, {"K": TensorProto.FLOAT16, "V": TensorProto.FLOAT16,
                                                  "K_int": TensorProto.FLOAT16} if dtype == np.float16 else None)
    session = _session(model)
    for keep in (np.array([[True], [False], [True]]), np.zeros((B, 1), dtype=bool), np.ones((1, 1), dtype=bool)):
        feed = _kv_inputs(keep, dtype=dtype)
        _assert_all_equal(session.run(None, feed), ops.kv_compact_reference(**feed))


def test_kv_compact_plain_body_matches_numpy():
    """The body without the single-entry If (what static QDQ graphs carry) gives the same results."""
    model = ops.standalone_model(ops.KV_COMPACT)
    del model.functions[:]
    model.functions.extend(ops.function_protos(single_entry_branch=False))
    assert not any(n.op_type == "If" for f in model.functions for n in f.node)
    session = _session(model)
    for keep in [*_keep_cases().values(), np.array([[True], [False], [True]])]:
        feed = _kv_inputs(keep)
        _assert_all_equal(session.run(None, feed), ops.kv_compact_reference(**feed))


def test_kv_compact_empty_rows_give_width_one():
    session = _session(ops.standalone_model(ops.KV_COMPACT))
    K_out, _, _, valid, lengths, _ = session.run(None, _kv_inputs(np.zeros((B, T), dtype=bool)))
    assert K_out.shape == (B, KVH, 1, D) and not valid.any() and not lengths.any()


def test_kv_compact_matches_torch_layer_cache(kv_session):
    keep = _keep_cases()["different_counts"]
    feed = _kv_inputs(keep, seed=3)
    cache = LayerCache(
        k=torch.from_numpy(feed["K"]),
        v=torch.from_numpy(feed["V"]),
        state=torch.from_numpy(feed["K_int"]),
        positions=torch.from_numpy(feed["positions"]),
        valid=torch.ones(B, T, dtype=torch.bool),
    )
    compacted = cache.compact(torch.from_numpy(keep))
    K_out, V_out, K_int_out, valid, lengths, positions_out = kv_session.run(None, feed)
    # padding included: both put the dropped entries after the kept ones, in order
    np.testing.assert_array_equal(K_out, compacted.k.numpy())
    np.testing.assert_array_equal(V_out, compacted.v.numpy())
    np.testing.assert_array_equal(K_int_out, compacted.state.numpy())
    np.testing.assert_array_equal(positions_out, compacted.positions.numpy())
    np.testing.assert_array_equal(valid, compacted.valid.numpy())
    np.testing.assert_array_equal(lengths, compacted.lengths.numpy())


def test_kv_compact_fp16_empty_state_opset18_and_unused_outputs():
    keep = _keep_cases()["one_row_empty"]
    feed = _kv_inputs(keep, seed=5, dtype=np.float16)
    feed["K_int"] = np.zeros((B, T, 0), dtype=np.float16)  # a policy without per-token state
    halves = {"K": TensorProto.FLOAT16, "V": TensorProto.FLOAT16, "K_int": TensorProto.FLOAT16}
    model = ops.standalone_model(ops.KV_COMPACT, halves, onnx_opset=18)
    onnx.checker.check_model(model, full_check=True)
    _assert_all_equal(_session(model).run(None, feed), ops.kv_compact_reference(**feed))

    # a call site may leave outputs it does not need empty
    schema = ops.OP_SCHEMAS[ops.KV_COMPACT]
    names_in = [io[0] for io in schema["inputs"]]
    node = ops.make_node(ops.KV_COMPACT, names_in, ["K_out", "", "", "valid", "", ""])
    graph = onnx.helper.make_graph(
        [node],
        "partial",
        [onnx.helper.make_tensor_value_info(n, t, None) for n, t in [
            ("K", TensorProto.FLOAT), ("V", TensorProto.FLOAT), ("K_int", TensorProto.FLOAT),
            ("keep", TensorProto.BOOL), ("positions", TensorProto.INT64)]],
        [onnx.helper.make_tensor_value_info("K_out", TensorProto.FLOAT, ["B", "KVH", "W", "D"]),
         onnx.helper.make_tensor_value_info("valid", TensorProto.BOOL, ["B", "W"])],
    )
    functions = ops.function_protos()
    partial = onnx.helper.make_model(graph, opset_imports=ops.opset_imports(), functions=functions)
    partial.ir_version = 10
    feed = _kv_inputs(keep, seed=6)
    K_out, valid = _session(partial).run(None, feed)
    want = ops.kv_compact_reference(**feed)
    np.testing.assert_array_equal(K_out, want[0])
    np.testing.assert_array_equal(valid, want[3])


# ---------------------------------------------------------------------------------------------------------
# ThresholdGather
# ---------------------------------------------------------------------------------------------------------

def _tg_inputs(seed: int, lengths: list[int], threshold: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.int64)  # right padding
    keep_always = np.zeros((B, T), dtype=bool)
    keep_always[:, 0] = True  # [CLS]
    scores = rng.random((B, T)).astype(np.float32)
    scores[0, 3] = np.float32(threshold)  # equal to the threshold: dropped (strict >)
    return {
        "hidden": rng.standard_normal((B, T, H)).astype(np.float32),
        "scores": scores,
        "threshold": np.array(threshold, dtype=np.float32),
        "mask": mask,
        "keep_always": keep_always,
    }


@pytest.mark.parametrize(
    "threshold, lengths",
    [(0.5, [T, 6, 3]), (-1.0, [T, T, T]), (-1.0, [T, 4, 1]), (2.0, [T, 5, 2]), (0.25, [2, 7, T])],
    ids=["random", "all_kept_but_a_tie", "all_above_padded", "only_cls", "different_counts"],
)
def test_threshold_gather_matches_numpy(tg_session, threshold, lengths):
    feed = _tg_inputs(0, lengths, threshold)
    got = tg_session.run(None, feed)
    _assert_all_equal(got, ops.threshold_gather_reference(**feed))
    hidden_out, mask_out, kept_index = got
    stay = ((feed["scores"] > threshold) | feed["keep_always"]) & feed["mask"].astype(bool)
    assert hidden_out.shape[1] == max(int(stay.sum(-1).max()), 1)
    assert not stay[0, 3]
    for b in range(B):
        n = int(stay[b].sum())
        assert n >= 1 and mask_out[b, :n].all() and not mask_out[b, n:].any()
        assert kept_index[b, 0] == 0  # [CLS] stays first
        np.testing.assert_array_equal(kept_index[b, :n], np.flatnonzero(stay[b]))
        np.testing.assert_array_equal(hidden_out[b, :n], feed["hidden"][b][stay[b]])
    if threshold == 2.0:
        assert hidden_out.shape[1] == 1 and mask_out.all()


def test_threshold_gather_matches_ltp_hard_removal(tg_session):
    thresholds = LTPThresholds(4, LTPConfig(final_threshold=0.8, temperature=0.08))
    threshold = thresholds.thresholds()[2].detach()  # () float32, layer 2 of 4
    feed = _tg_inputs(7, [T, 7, 4], float(threshold))
    scores, alive = torch.from_numpy(feed["scores"]), torch.from_numpy(feed["mask"]).bool()
    first = torch.zeros(1, T, dtype=torch.bool)
    first[0, 0] = True
    keep = (thresholds.keep(2, scores) | first) & alive  # as run_encoder(mode="hard")
    index, valid = pack_kept(keep)
    hidden = torch.from_numpy(feed["hidden"]).gather(1, index[:, :, None].expand(-1, -1, H))
    feed["threshold"] = threshold.numpy()
    hidden_out, mask_out, kept_index = tg_session.run(None, feed)
    np.testing.assert_array_equal(hidden_out, hidden.numpy())
    np.testing.assert_array_equal(mask_out, valid.numpy())
    np.testing.assert_array_equal(kept_index, index.numpy())
