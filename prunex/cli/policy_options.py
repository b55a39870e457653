"""The --policy / --kv-budget / --kv-tokens options as a policy for PyTorch (the runtime takes a `PolicySpec`)."""

from __future__ import annotations

from typing import Optional

from prunex.errors import PrunexError


def budgeted_policy(learned, name: Optional[str], kv_budget: Optional[float], kv_tokens: Optional[int],
                    context: int):
    """The training-free policy `name`, or the `learned` one capped, at the budget given."""
    from prunex.prune.budget import BudgetedPolicy, budget_tokens
    from prunex.prune.policy_spec import PolicySpec

    if name is not None:
        return PolicySpec.from_options(name, kv_budget, kv_tokens, context).build()
    tokens = budget_tokens(kv_budget, kv_tokens, context)
    if learned is None:
        raise PrunexError("this model has no learned policy to cap: add --policy window|sinks|h2o|tova")
    return BudgetedPolicy(learned, tokens)
