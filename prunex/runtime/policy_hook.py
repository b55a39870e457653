"""The runtime's hooks for a run-time keep policy on any exported decoder, dense included.

Two kinds, both combined with the graph's own decisions (a DCP graph: its learned ones; a dense graph: keep
all) as a logical AND; the entries they drop become holes that the cache manager masks and compacts:
- position-only policies (window, sinks: `WindowPolicy`) restrict, before each decode step, which cached
  entries the row's next query may see (`restrict_to_policy`);
- attention policies (H2O, TOVA: `AttentionPolicy`) keep a score per cached entry (the manager's `score`),
  updated from each query's attention probabilities, which the graph outputs when exported with
  `--attention-scores` (`observe_attention`); once a decode step's new token has joined, each layer and row over
  its budget loses its lowest-scored unprotected entries before the query attends (`evict_over_budget`), as
  `prunex.prune.attention_policy` does in PyTorch.
The prompt pass runs as exported (a dense graph attends to the whole prompt, the attention policies only score
it); the budget holds from the first decode step on.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prunex.errors import PrunexError
from prunex.format import DecoderManifest
from prunex.prune.attention_policy import AttentionPolicy
from prunex.prune.policy import KeepPolicy, PruningPolicy
from prunex.prune.policy_spec import PolicySpec
from prunex.runtime.slot_cache import KVCacheManager


def check_runtime_policy(spec: PolicySpec, manifest: DecoderManifest) -> PruningPolicy:
    """The policy of `spec`, built, if the runtime can apply it to this graph, else a clear PrunexError."""
    policy = spec.build()
    if isinstance(policy, AttentionPolicy):
        if not manifest.attention:
            raise PrunexError(
                f"{type(policy).__name__} scores tokens by the attention they receive: export the model with "
                "`prunex export --attention-scores` (this graph does not output the attention probabilities)"
            )
        return policy
    if not isinstance(policy, KeepPolicy) or policy.state_dim != 0:
        raise PrunexError(
            f"the runtime applies window, sinks, h2o and tova; {type(policy).__name__} needs per-token state the "
            "runtime does not keep: measure it in PyTorch (prunex eval ppl --policy ...)"
        )
    return policy


def policy_fields(policy: PruningPolicy | None) -> tuple[str, ...]:
    """The per-entry fields of the cache (`KVCacheManager(policy_fields=...)`) a run-time policy reads."""
    if policy is None:
        return ()
    return ("positions", "score") if isinstance(policy, AttentionPolicy) else ("positions",)


def restrict_to_policy(policy: KeepPolicy, cache: KVCacheManager, query_positions: Tensor) -> None:
    """Clear the validity of the cached entries `policy` drops for each row's next query at
    `query_positions` (B,), in every layer (a few elementwise ops on (B, W_l) per layer: no copy of K/V)."""
    query = query_positions.to(cache.device)[:, None, None]  # (B, 1, 1)
    for layer in range(cache.num_layers):
        positions = cache.layer_view("positions", layer)[:, None, :]  # (B, 1, W_l)
        keep = policy.step_keep(layer, None, None, query, positions, math.inf)  # (B, 1, W_l)
        cache.layer_view("valid", layer).logical_and_(keep[:, 0])


def expire_windows(windows: list[int], cache: KVCacheManager, last_positions: Tensor) -> None:
    """After a run whose rows' last query was at `last_positions` (B,): in each sliding-window layer (W > 0 in
    `windows`), the entries that query no longer saw (position <= last - W) leave the cache (holes that the
    manager compacts), so such a layer holds its window, as the PyTorch cache does; the next query's graph masks
    the oldest of them."""
    last = last_positions.to(cache.device)[:, None]  # (B, 1)
    for layer, window in enumerate(windows):
        if window:
            cache.layer_view("valid", layer).logical_and_(cache.layer_view("positions", layer) > last - window)


def evict_over_budget(policy: AttentionPolicy, cache: KVCacheManager, query_positions: Tensor) -> None:
    """After a decode step's new entries joined (`begin_step`), before the query attends: in every layer and
    row holding more than `policy.kv_tokens` entries, the excess leaves, lowest-scored unprotected first
    (one sort over (B, W_l) per layer)."""
    query = query_positions.to(cache.device)[:, None]  # (B, 1)
    for layer in range(cache.num_layers):
        valid, score = cache.layer_view("valid", layer), cache.layer_view("score", layer)  # (B, W_l)
        excess = (valid.sum(-1) - policy.kv_tokens).clamp_min(0)  # (B,)
        candidates = valid & ~policy.protected(query, cache.layer_view("positions", layer))  # (B, W_l)
        order = score.masked_fill(~candidates, math.inf).argsort(dim=-1, stable=True)  # lowest first
        rank = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=cache.device)
                                                .expand_as(order))  # (B, W_l): each slot's place in that order
        valid &= ~(candidates & (rank < excess[:, None]))


def observe_attention(policy: AttentionPolicy, cache: KVCacheManager, attention: list[Tensor]) -> None:
    """Update the entries' scores from a run's attention probabilities, (B, H, S, W_l) per layer, averaged
    over the heads: all S queries of a prompt chunk in one op per layer."""
    for layer, probabilities in enumerate(attention):
        score = cache.layer_view("score", layer)  # (B, W_l)
        score.copy_(policy.observe(score, probabilities.mean(1)))  # from (B, S, W_l)
