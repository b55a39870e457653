"""prunex: transformers with learned token pruning, from training to a fast runtime.

The public API is flat; importing prunex loads nothing heavy.
"""

from prunex.config import DCPConfig, TrainConfig
from prunex.errors import PrunexError
from prunex.loading import load_lm
from prunex.models.sources import load_model
from prunex.prune.dcp import DCPPolicy
from prunex.prune.lm import GenerationResult, PrunedLM
from prunex.prune.window import WindowPolicy

__all__ = [
    "DCPConfig",
    "DCPPolicy",
    "GenerationResult",
    "PrunedLM",
    "PrunexError",
    "TrainConfig",
    "WindowPolicy",
    "load_lm",
    "load_model",
]
