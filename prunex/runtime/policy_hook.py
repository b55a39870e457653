"""The runtime's one hook for a run-time keep policy on any exported decoder, dense included.

Before each decode step, a policy that needs only positions (window, sinks: `WindowPolicy`) restricts which
cached entries each row's next query may see; the graph then makes its own decisions (a DCP graph: its learned
ones; a dense graph: keep all) over what is left, so the two combine as a logical AND, and the entries dropped
here become holes that the cache manager masks and compacts like any other. The prompt pass runs as exported
(a dense graph attends to the whole prompt); the budget holds from the first decode step on. Policies that need
attention mass (H2O, TOVA) need a graph output that the export does not provide yet, so they are refused here.
"""

from __future__ import annotations

import math

from torch import Tensor

from prunex.errors import PrunexError
from prunex.prune.policy import KeepPolicy
from prunex.runtime.kv_cache import KVCacheManager


def check_runtime_policy(policy: object) -> KeepPolicy:
    """`policy` if the runtime can apply it (a position-only KeepPolicy), else a clear PrunexError."""
    if not isinstance(policy, KeepPolicy) or policy.state_dim != 0:
        name = type(policy).__name__
        raise PrunexError(
            f"the runtime applies position-only policies (window, sinks); {name} needs per-token state or the "
            "attention mass, which exported graphs do not output yet: measure it in PyTorch (prunex eval ppl "
            "--policy ...)"
        )
    return policy


def restrict_to_policy(policy: KeepPolicy, cache: KVCacheManager, query_positions: Tensor) -> None:
    """Clear the validity of the cached entries `policy` drops for each row's next query at
    `query_positions` (B,), in every layer (a few elementwise ops on (B, W) per layer: no copy of K/V)."""
    query = query_positions.to(cache.device)[:, None, None]  # (B, 1, 1)
    for layer in range(cache.num_layers):
        keep = policy.step_keep(layer, None, None, query, cache.positions[layer][:, None, :], math.inf)  # (B, 1, W)
        cache.valid[layer] &= keep[:, 0]
