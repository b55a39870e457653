"""Where PyTorch work runs (training, PyTorch evaluation): `auto`, `cpu` or `cuda`."""

from __future__ import annotations

import torch

from prunex.errors import PrunexError

DEVICES = ("auto", "cpu", "cuda")  # what every --device accepts (PyTorch work and ONNX Runtime sessions)


def check_device_name(name: str) -> None:
    """Refuse a device name prunex does not know, saying which it does."""
    if name not in DEVICES:
        raise PrunexError(f"device must be one of {', '.join(DEVICES)}, not {name!r}")


def torch_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when PyTorch sees a GPU, else the CPU; `cuda` without a GPU is a clear error."""
    check_device_name(name)
    if name == "cuda" and not torch.cuda.is_available():
        raise PrunexError("--device cuda: this PyTorch sees no CUDA GPU; use --device cpu (or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights, tensor-core matmuls (~1e-3 relative)
    return torch.device(name)
