"""ONNX export: the prunex op domain (ops.py) and what builds on it.

- ops.py: `prunex::KVCompact` / `prunex::ThresholdGather` as FunctionProtos, with numpy references.
- torch_ops.py: the PyTorch twin `torch.ops.prunex.kv_compact` and its legacy-exporter symbolic.
- step_module.py: the decoder prefill/decode step module that is traced.
- decoder.py: `export_decoder(lm, out, ...)`: export, validate, then atomically write the folder.
- validate.py: checker + ONNX Runtime vs PyTorch logits and kept counts.
- manifest.py: `prunex.json`, the contract with the runtime (`prunex.runtime.onnx_generate`).
"""
