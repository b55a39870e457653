"""How fast ONNX Runtime streams an exported decoder's weights through its MatMuls alone, at B rows a step.

The decode step's memory-bandwidth floor (`prunex bench decode`) assumes the weights are read at the copy
bandwidth; this measures what the CPU's MatMul kernels reach on the graph's own weight matrices, with nothing
else in the graph (no attention, norms or host work): the ceiling of a decode step in that precision.

    python scripts/matmul_ceiling.py runs/bench/dcp --batch 1 --batch 8 --threads 2

Prints, per batch: the MatMuls' time a step, their weights' bytes and the bandwidth that is, next to the copy
bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from prunex.bench.decode import memory_bandwidth
from prunex.format import read_manifest


def matmul_chain(model: onnx.ModelProto, batch: int) -> tuple[onnx.ModelProto, int]:
    """A graph of `model`'s MatMuls whose weight is an fp32 initializer, each fed (batch, 1, K) from a graph
    input of its width; returns it and the weights' bytes."""
    weights = {t.name: t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    nodes, used, widths = [], [], set()
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights:
            rows, _ = weights[node.input[1]].dims
            widths.add(rows)
            nodes.append(helper.make_node("MatMul", [f"x{rows}", node.input[1]], [f"y{len(nodes)}"]))
            used.append(weights[node.input[1]])
    inputs = [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [batch, 1, k]) for k in sorted(widths)]
    outputs = [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None) for n in nodes]
    graph = helper.make_graph(nodes, "matmuls", inputs, outputs, used)
    chain = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return chain, sum(int(np.prod(t.dims)) * 4 for t in used)


def time_chain(path: Path, batch: int, threads: int, steps: int = 20) -> float:
    """Median seconds of one run of the chain at `path`."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.random.default_rng(0).standard_normal((batch, 1, i.shape[2])).astype(np.float32)
             for i in session.get_inputs()}
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="an exported decoder dir (fp32)")
    parser.add_argument("--batch", type=int, action="append", help="rows a step (repeatable; default 1 and 8)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = onnx.load(str(args.directory / read_manifest(args.directory).model_file))
    print(f"copy bandwidth: {memory_bandwidth() / 1e9:.1f} GB/s")
    with tempfile.TemporaryDirectory() as scratch:
        for batch in args.batch or [1, 8]:
            chain, weight_bytes = matmul_chain(model, batch)
            path = Path(scratch) / f"chain{batch}.onnx"
            onnx.save(chain, str(path))
            seconds = time_chain(path, batch, args.threads)
            print(f"batch {batch}: {len(chain.graph.node)} MatMuls, {weight_bytes / 1e6:.0f} MB of weights in "
                  f"{seconds * 1e3:.2f} ms a step = {weight_bytes / seconds / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
