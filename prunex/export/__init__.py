"""ONNX export: the prunex op domain (ops.py); exporters and the manifest build on it."""
