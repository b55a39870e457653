"""ONNX export: the prunex op domain (ops.py) and what builds on it.

- ops.py: `prunex::KVCompact` / `prunex::ThresholdGather` as FunctionProtos, with numpy references.
- torch_ops.py: the PyTorch twin `torch.ops.prunex.kv_compact` and its legacy-exporter symbolic.
- step_module.py: the decoder step module that is traced (read-only past, keep_past and new entries out).
- decoder.py: `export_decoder(lm, out, ...)`: export, validate, then atomically write the folder.
- validate.py: checker + ONNX Runtime vs PyTorch logits and kept counts.
- encoder.py: `export_encoder`: the LTP classifier graph with ThresholdGather between layers.
- manifest.py: `prunex.json`, the contract with the runtime (`prunex.runtime`).
"""
