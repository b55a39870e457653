"""A run-time keep policy as data: a training-free policy's name and budget, resolved once from the options
(`--policy`, `--kv-budget` / `--kv-tokens`) or by an application, and handed as one value to the runtime,
`prunex generate`, `prunex serve` (its replicas too) and `prunex bench`. It says what the export must provide
(`needs_attention_scores`) and builds the policy object where it runs (`build`).

    spec = PolicySpec.from_options("tova", kv_budget=0.25, kv_tokens=None, context=2048)
    runtime = prunex.Runtime("exported/smollm2-dcp-scores", policy=spec)
"""

from __future__ import annotations

from dataclasses import dataclass

from prunex.errors import PrunexError
from prunex.prune.budget import budget_tokens
from prunex.prune.policy import PruningPolicy
from prunex.prune.training_free import TRAINING_FREE, training_free_policy

ATTENTION_SCORED = ("h2o", "tova")  # the policies that read each query's attention probabilities


@dataclass(frozen=True)
class PolicySpec:
    """A training-free keep policy held to `kv_tokens` cached tokens per row and layer."""

    name: str  # one of TRAINING_FREE: window, sinks, h2o, tova
    kv_tokens: int  # the budget: cached tokens per row and layer
    sink_tokens: int = 4  # "sinks": the first tokens always kept

    def __post_init__(self) -> None:
        self.build()  # an unknown name, or a budget that does not exceed the sinks, is refused here

    @classmethod
    def from_options(cls, name: str | None, kv_budget: float | None, kv_tokens: int | None,
                     context: int) -> PolicySpec | None:
        """The spec of `--policy NAME` with exactly one of `--kv-budget` (a kept fraction over `context` tokens)
        and `--kv-tokens`; None without a policy (a budget without one is refused)."""
        if name is None:
            if kv_budget is not None or kv_tokens is not None:
                raise PrunexError(f"--kv-budget/--kv-tokens need --policy {'|'.join(TRAINING_FREE)}")
            return None
        return cls(name, budget_tokens(kv_budget, kv_tokens, context))

    @property
    def needs_attention_scores(self) -> bool:
        """True when the export must output each layer's attention probabilities (`--attention-scores`)."""
        return self.name in ATTENTION_SCORED

    def build(self) -> PruningPolicy:
        """The policy object (a fresh one: attention policies keep per-row state)."""
        return training_free_policy(self.name, self.kv_tokens, self.sink_tokens)
