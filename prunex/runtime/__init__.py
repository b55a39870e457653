"""Runtimes for exported prunex models (ONNX Runtime)."""
