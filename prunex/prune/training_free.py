"""The training-free keep policies by name, each held to a cap of `kv_tokens` cached tokens per query."""

from __future__ import annotations

from collections.abc import Callable

from prunex.errors import PrunexError
from prunex.prune.attention_policy import H2OPolicy, TOVAPolicy
from prunex.prune.policy import PruningPolicy
from prunex.prune.window import WindowPolicy

#: name -> what it keeps (the CLI's --policy choices)
TRAINING_FREE = {
    "window": "the most recent tokens (local window)",
    "sinks": "the first 4 tokens (attention sinks) + the most recent (StreamingLLM)",
    "h2o": "heavy hitters by accumulated attention mass + the most recent half of the budget (H2O)",
    "tova": "drops the token the latest query attended to least (TOVA)",
}


def _sinks(kv_tokens: int, sink_tokens: int) -> WindowPolicy:
    if kv_tokens <= sink_tokens:
        raise PrunexError(f"the budget ({kv_tokens} tokens) must exceed the sinks ({sink_tokens})")
    return WindowPolicy(window=kv_tokens, sink_tokens=sink_tokens)


# name -> (kv_tokens, sink_tokens) -> the policy
_BUILDERS: dict[str, Callable[[int, int], PruningPolicy]] = {
    "window": lambda kv_tokens, sinks: WindowPolicy(window=kv_tokens, sink_tokens=0),
    "sinks": _sinks,
    "h2o": lambda kv_tokens, sinks: H2OPolicy(kv_tokens=kv_tokens),
    "tova": lambda kv_tokens, sinks: TOVAPolicy(kv_tokens=kv_tokens),
}


def training_free_policy(name: str, kv_tokens: int, sink_tokens: int = 4) -> PruningPolicy:
    """The policy `name` (see TRAINING_FREE) keeping `kv_tokens` per query; `sink_tokens` is for "sinks"."""
    if name not in _BUILDERS:
        raise PrunexError(f"--policy {name!r} is not available; use one of {', '.join(TRAINING_FREE)}")
    return _BUILDERS[name](kv_tokens, sink_tokens)
