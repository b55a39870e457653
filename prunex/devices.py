"""Where PyTorch work runs (training, PyTorch evaluation): `auto`, `cpu` or `cuda`."""

from __future__ import annotations

import torch

from prunex.errors import PrunexError

TORCH_DEVICES = ("auto", "cpu", "cuda")


def torch_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when PyTorch sees a GPU, else the CPU; `cuda` without a GPU is a clear error."""
    if name not in TORCH_DEVICES:
        raise PrunexError(f"device must be one of {', '.join(TORCH_DEVICES)}, not {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise PrunexError("--device cuda: this PyTorch sees no CUDA GPU; use --device cpu (or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights, tensor-core matmuls (~1e-3 relative)
    return torch.device(name)
