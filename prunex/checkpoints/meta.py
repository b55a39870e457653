"""Pruning checkpoints on disk: `pruning.safetensors` (the new parameters) + `pruning.json` (the rest).

A checkpoint is tied to its base model by id and weight hash; loading it onto another model is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from prunex.config import DCPConfig, from_dict, read_json, to_dict, write_json
from prunex.errors import PrunexError

WEIGHTS_FILE = "pruning.safetensors"
META_FILE = "pruning.json"


@dataclass
class CheckpointMeta:
    """Everything about a pruning checkpoint except its tensors."""

    method: str  # dcp | ltp
    base_model: str  # packaged name or path the base model was loaded from
    base_model_hash: str  # `weights_hash` of the base model the parameters were trained on
    config: dict[str, Any]  # the method's config (DCPConfig fields for dcp)
    training: dict[str, Any] = field(default_factory=dict)  # DCPTrainConfig fields and measured figures

    def dcp_config(self) -> DCPConfig:
        return from_dict(DCPConfig, self.config)


def is_checkpoint(path: str | Path) -> bool:
    """True when `path` is a folder holding a pruning checkpoint."""
    return (Path(path) / META_FILE).is_file()


def save_checkpoint(out_dir: str | Path, meta: CheckpointMeta, tensors: dict[str, torch.Tensor]) -> Path:
    """Write the checkpoint (tensors stored as float16 to keep shipped checkpoints small)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    small = {name: t.detach().to(torch.float16).contiguous() for name, t in tensors.items()}
    save_file(small, str(out / WEIGHTS_FILE))
    write_json(out / META_FILE, to_dict(meta))
    return out


def load_checkpoint(path: str | Path) -> tuple[CheckpointMeta, dict[str, torch.Tensor]]:
    """Read a checkpoint folder; tensors come back as float32."""
    folder = Path(path)
    if not folder.is_dir():
        raise PrunexError(f"pruning checkpoint not found: {folder}")
    meta = from_dict(CheckpointMeta, read_json(folder / META_FILE, "pruning checkpoint (pruning.json)"))
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise PrunexError(f"{folder} has {META_FILE} but no {WEIGHTS_FILE}")
    return meta, {name: t.to(torch.float32) for name, t in load_file(str(weights)).items()}


def check_base(meta: CheckpointMeta, model_id: str, model_hash: str) -> None:
    """Refuse to apply a checkpoint to a base model other than the one it was trained on."""
    if meta.base_model_hash != model_hash:
        raise PrunexError(
            f"this pruning checkpoint was trained on {meta.base_model!r} (weights {meta.base_model_hash}); "
            f"the model given is {model_id!r} (weights {model_hash}). Use the checkpoint's own base model."
        )
