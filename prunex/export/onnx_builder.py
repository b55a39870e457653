"""GraphBuilder: write an ONNX graph node by node (unique value names, deduplicated constants, initializers)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib operators


class GraphBuilder:
    """Collects the nodes, initializers and io of one graph; `model()` assembles it."""

    def __init__(self, name: str, parent: GraphBuilder | None = None) -> None:
        self.name = name
        self.root = self if parent is None else parent.root  # owns names, constants and weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._constants: dict[tuple, str] = {}
        self._count = 0

    def _fresh(self, hint: str) -> str:
        self.root._count += 1
        return f"{hint}_{self.root._count}"

    def branch(self, name: str) -> GraphBuilder:
        """A builder for the body of an `If` branch: its nodes see this graph's values (outer scope)."""
        return GraphBuilder(name, parent=self)

    def body(self, outputs: list[str]) -> onnx.GraphProto:
        """This branch as a graph returning `outputs` (an `If` attribute)."""
        infos = [helper.make_empty_tensor_value_info(name) for name in outputs]
        return helper.make_graph(self.nodes, self.name, [], infos)

    def input(self, name: str, dtype: int, shape: list) -> str:
        """Declare a graph input; returns its name."""
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def output(self, value: str, name: str, dtype: int, shape: list) -> None:
        """Expose `value` as the graph output `name` (an Identity when the names differ)."""
        if value != name:
            self.nodes.append(helper.make_node("Identity", [value], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, dtype, shape))

    def weight(self, name: str, array: np.ndarray) -> str:
        """Add an initializer (a weight) to the root graph; returns its name."""
        self.root.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))  # 0-d stays 0-d
        return name

    def const(self, value, dtype=np.int64) -> str:
        """A small constant (scalar or list), shared by every node that asks for the same value."""
        array = np.array(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        constants = self.root._constants
        if key not in constants:
            constants[key] = self.weight(self._fresh("const"), array)
        return constants[key]

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, domain: str = "", **attrs):
        """Append a node; returns its output name (or the list of names when it has several). Empty-string
        inputs are omitted optional inputs; in `outputs`, "" marks an unused output."""
        names = [self._fresh(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self._fresh(op_type), domain=domain,
                                           **attrs))
        return names[0] if len(names) == 1 else names

    def model(self, opset: int, extra_domains: tuple[str, ...] = (MS_DOMAIN,)) -> onnx.ModelProto:
        """The assembled model (IR 8+), importing the standard opset and `extra_domains` v1."""
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in extra_domains]
        model = helper.make_model(graph, opset_imports=imports, producer_name="prunex")
        model.ir_version = max(model.ir_version, 8)
        return model


FLOAT, INT32, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL
