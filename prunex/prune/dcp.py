"""Dynamic Context Pruning (Anagnostidis & Pavllo, 2023): learned, per-layer KV-cache eviction.

Each layer gets interaction projections q_int, k_int: d -> r (no bias) and a scalar bias beta. Query n
keeps past key j with probability alpha-sigmoid(q_int(x_n) . k_int(x_j) / sqrt(r) + beta); decisions
multiply over later queries, so a dropped token stays dropped. One decision per layer, shared by all
(query and KV) heads. alpha = inf at inference: hard 0/1 decisions, so dropped tokens can leave memory.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from prunex.config import DCPConfig
from prunex.prune.alpha_sigmoid import alpha_sigmoid
from prunex.prune.policy import KeepPolicy, sink_mask


class DCPPolicy(nn.Module, KeepPolicy):
    """The learned DCP keep policy for a model with `num_layers` layers of width `hidden_size`."""

    def __init__(self, num_layers: int, hidden_size: int, config: DCPConfig | None = None) -> None:
        super().__init__()
        self.config = config or DCPConfig()
        r = self.config.interaction_dim
        self.state_dim = r  # k_int is cached beside K/V
        self.q_int = nn.ModuleList(nn.Linear(hidden_size, r, bias=False) for _ in range(num_layers))
        self.k_int = nn.ModuleList(nn.Linear(hidden_size, r, bias=False) for _ in range(num_layers))
        self.bias = nn.Parameter(torch.full((num_layers,), float(self.config.init_bias)))
        for proj in [*self.q_int, *self.k_int]:
            nn.init.normal_(proj.weight, std=hidden_size**-0.5)

    def logits(self, layer: int, q_int: Tensor, k_int: Tensor) -> Tensor:
        """(B, Tq, r) and (B, Tk, r) -> (B, Tq, Tk) keep logits."""
        return q_int @ k_int.transpose(-1, -2) / math.sqrt(self.state_dim) + self.bias[layer]

    def states(self, layer: int, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.q_int[layer](x), self.k_int[layer](x)  # (B, S, r) each; k_int is cached

    def step_keep(self, layer: int, query_state: Tensor | None, key_state: Tensor | None, query_positions: Tensor,
                  key_positions: Tensor, alpha: float) -> Tensor:
        logits = self.logits(layer, query_state, key_state)  # (B, S, K)
        protected = self.protected(query_positions, key_positions)  # (B, S, K)
        if math.isinf(alpha):
            return (logits > 0) | protected
        return torch.where(protected, torch.ones_like(logits), alpha_sigmoid(logits, alpha))

    def protected(self, query_positions: Tensor, key_positions: Tensor) -> Tensor:
        """Pairs whose key may not be dropped by that query: sinks, and keys among the recent tokens."""
        recent = query_positions - key_positions < self.config.recent_tokens
        return recent | sink_mask(key_positions, self.config.sink_tokens)
