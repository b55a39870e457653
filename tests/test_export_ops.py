"""The prunex ONNX op (ThresholdGather, a FunctionProto) runs in plain ONNX Runtime and matches numpy and torch
bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from prunex.export import ops
from prunex.prune.ltp import LTPConfig, LTPThresholds
from prunex.tensors import pack_kept

B, KVH, T, D, R, H = 3, 2, 9, 4, 5, 6


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tg_session() -> ort.InferenceSession:
    return _session(ops.standalone_model(ops.THRESHOLD_GATHER, {"mask": TensorProto.INT64}))


def _assert_all_equal(got: list[np.ndarray], want: tuple[np.ndarray, ...]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


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
        ops.make_node(ops.THRESHOLD_GATHER, ["hidden", "scores"], ["hidden_out"])
    with pytest.raises(ValueError, match="opset 17 or later"):
        ops.function_protos(16)


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
