"""ONNX export: the fused decoder graph, the prunex op domain (ops.py) and what builds on them.

- onnx_builder.py: `GraphBuilder`, an ONNX graph written node by node.
- decoder_graph.py: the decoder graph (GroupQueryAttention over the runtime's slot buffers, DCP decisions inside).
- ops.py: `prunex::ThresholdGather` as a FunctionProto, with its numpy reference.
- torch_ops.py: the PyTorch twin `torch.ops.prunex.threshold_gather` and its legacy-exporter symbolic.
- decoder.py: `export_decoder(lm, out, ...)`: build, validate, then atomically write the folder.
- validate.py: checker + ONNX Runtime vs PyTorch logits and kept counts.
- encoder.py: `export_encoder`: the LTP classifier graph with ThresholdGather between layers.
- manifest.py: `prunex.json`, the contract with the runtime (`prunex.runtime`).
"""
