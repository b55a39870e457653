"""The --policy / --kv-budget / --kv-tokens options, turned into policies (PyTorch) or a cap (runtime)."""

from __future__ import annotations

from typing import Optional

from prunex.errors import PrunexError


def budgeted_policy(learned, name: Optional[str], kv_budget: Optional[float], kv_tokens: Optional[int],
                    context: int):
    """The training-free policy `name`, or the `learned` one capped, at the budget given."""
    from prunex.prune.budget import BudgetedPolicy, budget_tokens
    from prunex.prune.training_free import training_free_policy

    tokens = budget_tokens(kv_budget, kv_tokens, context)
    if name is not None:
        return training_free_policy(name, tokens)
    if learned is None:
        raise PrunexError("this model has no learned policy to cap: add --policy window|sinks|h2o|tova")
    return BudgetedPolicy(learned, tokens)


def runtime_budget(name: Optional[str], kv_budget: Optional[float], kv_tokens: Optional[int],
                   context: int) -> Optional[int]:
    """The cap in tokens of a run-time --policy, or None without one (the runtime checks that the graph can
    run it: h2o / tova need an export with --attention-scores)."""
    from prunex.prune.budget import budget_tokens
    from prunex.prune.training_free import training_free_policy

    if name is None:
        if kv_budget is not None or kv_tokens is not None:
            raise PrunexError("--kv-budget/--kv-tokens need --policy window|sinks|h2o|tova for an exported dir")
        return None
    tokens = budget_tokens(kv_budget, kv_tokens, context)
    training_free_policy(name, tokens)  # checks the budget against the sinks
    return tokens
