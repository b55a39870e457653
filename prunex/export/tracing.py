"""Trace a module to ONNX with the legacy exporter and attach the prunex op FunctionProtos."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from prunex.export.ops import function_protos
from prunex.export.torch_ops import register_symbolics
from prunex.format import DOMAIN, DOMAIN_VERSION


def export_with_prunex_ops(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> None:
    """`torch.onnx.export(dynamo=False)` of `module`; prunex custom ops become prunex-domain nodes whose
    bodies (FunctionProtos) are attached so that a plain ONNX Runtime runs the file."""
    register_symbolics(opset)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: shapes the modules use are traced, not frozen
        torch.onnx.export(
            module, example, str(path), input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes, opset_version=opset,
            dynamo=False, do_constant_folding=True,
        )
    model = onnx.load(str(path))  # the prunex opset import is 1 when used (the exporter's default), else added
    model.functions.extend(function_protos(opset))
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    model.ir_version = max(model.ir_version, 8)
    onnx.save(model, str(path))
