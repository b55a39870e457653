"""Graph rewrites before int8 quantization."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def untie_shared_weights(model: onnx.ModelProto) -> list[str]:
    """Give every MatMul that shares its weight with a Gather (a tied embedding) its own initializer.

    Quantized together, the shared table would be stored int8 for the Gather and dequantized in full at every
    step for the output projection (int8 then runs slower than fp32). A MatMul reached through a Transpose
    of the table gets the transposed table as a constant, and the Transpose goes. Returns the tables untied.
    """
    initializers = {init.name: init for init in model.graph.initializer}
    gathered = {n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in initializers}
    untied: list[str] = []
    for node in list(model.graph.node):
        if node.op_type == "Transpose" and node.input[0] in gathered:
            users = [n for n in model.graph.node if node.output[0] in n.input]
            if not users or any(u.op_type != "MatMul" for u in users):
                continue
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            table = numpy_helper.to_array(initializers[node.input[0]])
            copy = numpy_helper.from_array(np.ascontiguousarray(np.transpose(table, perm)),
                                           f"{node.input[0]}.output_projection")
            model.graph.initializer.append(copy)
            for user in users:
                for i, name in enumerate(user.input):
                    if name == node.output[0]:
                        user.input[i] = copy.name
            model.graph.node.remove(node)
            untied.append(node.input[0])
        elif node.op_type == "MatMul" and node.input[1] in gathered:
            copy = numpy_helper.from_array(numpy_helper.to_array(initializers[node.input[1]]),
                                           f"{node.input[1]}.output_projection")
            model.graph.initializer.append(copy)
            node.input[1] = copy.name
            untied.append(copy.name)
    return untied
