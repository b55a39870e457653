"""prunex: transformers with learned token pruning, from training to a fast runtime.

The public API is flat. Training and export names need torch; the runtime names (Runtime, Generator,
SamplingParams, Classifier) are loaded on first use.
"""

from prunex.config import DCPConfig, DCPTrainConfig
from prunex.errors import PrunexError
from prunex.loading import load_lm
from prunex.models.sources import load_model
from prunex.prune.attention_policy import H2OPolicy, TOVAPolicy
from prunex.prune.budget import BudgetedPolicy
from prunex.prune.dcp import DCPPolicy
from prunex.prune.lm import GenerationResult, PrunedLM
from prunex.prune.policy_spec import PolicySpec
from prunex.prune.training_free import training_free_policy
from prunex.prune.window import WindowPolicy

_RUNTIME = {
    "Runtime": "prunex.runtime.runtime",
    "Generator": "prunex.runtime.generator",
    "Completion": "prunex.runtime.generator",
    "SamplingParams": "prunex.runtime.sampling",
    "CapacityError": "prunex.runtime.slot_cache",
    "Classifier": "prunex.runtime.classifier",
}


def __getattr__(name: str):
    """Lazy runtime names: `prunex.Runtime` imports onnxruntime only when asked for."""
    if name in _RUNTIME:
        import importlib

        return getattr(importlib.import_module(_RUNTIME[name]), name)
    raise AttributeError(f"module 'prunex' has no attribute {name!r}")


__all__ = [
    "BudgetedPolicy",
    "CapacityError",
    "Classifier",
    "Completion",
    "DCPConfig",
    "DCPPolicy",
    "GenerationResult",
    "Generator",
    "PolicySpec",
    "H2OPolicy",
    "PrunedLM",
    "PrunexError",
    "Runtime",
    "SamplingParams",
    "TOVAPolicy",
    "DCPTrainConfig",
    "WindowPolicy",
    "load_lm",
    "load_model",
    "training_free_policy",
]
