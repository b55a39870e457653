"""Typed, versioned configs, saved and loaded as JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prunex.errors import PrunexError

# Bumped when the meaning of a saved file changes; files from a newer version are refused.
FORMAT_VERSION = 1

T = TypeVar("T")


@dataclass
class DCPConfig:
    """Dynamic Context Pruning hyper-parameters (Anagnostidis & Pavllo, 2023)."""

    interaction_dim: int = 64  # r: width of the per-layer q_int / k_int projections
    init_bias: float = 5.0  # beta at init: large, so that at first (almost) every token is kept
    sink_tokens: int = 4  # the first tokens of a sequence are never dropped (attention sinks); 0 = pure DCP
    recent_tokens: int = 0  # a token cannot be dropped by the next `recent_tokens` queries; 0 = pure DCP


@dataclass
class ScorerConfig:
    """A learned K/V scorer (`prunex.prune.scorer`): what it keeps around its learned choice, and its budget."""

    sink_tokens: int = 4  # the first tokens of a sequence are always kept
    recent_fraction: float = 0.5  # ranked rule: share of each head's budget held by the most recent tokens
    rule: str = "ranked"  # ranked (sinks + recent + best-scored older) | attention (latest attention + prior)
    prior_weight: float = 1.0  # attention rule: the learned score's weight beside log(latest attention)
    kv_budget: float = 0.125  # default kept fraction of the causal K/V entries (--target-kv), over `context`
    context: int = 2048  # the context the default budget is stated at


LTP_STAGES = ("base", "soft", "hard")  # LTP training stages: dense fine-tune, soft masks, hard removal
DEFAULT_TEMPERATURE_FRACTION = 0.1  # T = final_threshold / 10 when not given
DEFAULT_MIN_TOKENS = 4  # tokens per row that no layer removes ([CLS] and the most important), when not given
IMPORTANCE_KINDS = ("relative", "absolute")  # what LTP's thresholds compare against (LTPConfig.importance)


@dataclass
class LTPConfig:
    """LTP hyper-parameters. `None` fields are resolved from the training data when training starts."""

    final_threshold: float | None = None  # threshold of the last layer's base schedule; None: 1 / mean tokens
    temperature: float | None = None  # T of the soft mask; None: final_threshold / 10
    min_tokens: int | None = None  # floor of tokens kept per row and layer ([CLS] included); None: 8 when
    #                                training starts, 0 for checkpoints written before the floor existed
    importance: str | None = None  # relative: attention mass x tokens present (an average token scores 1, in
    #   a 20-token snippet as in a 500-token article); absolute: the mass itself (~1/length). None: relative
    #   when training starts, absolute for checkpoints written before relative existed

    def resolved(self, mean_tokens: float) -> LTPConfig:
        """This config with `None` fields filled in for data whose rows average `mean_tokens` real tokens.

        final_threshold is the importance of a token that receives exactly the average attention: 1 for
        relative importance, 1 / mean_tokens for absolute (about 0.01 for 100-token inputs, the reference's
        setting for GLUE). The last layer removes below-average tokens, earlier layers proportionally fewer.
        T = final_threshold / 10 makes the soft mask go from 0.27 to 0.73 across +-10% of the final
        threshold: sharp enough that the soft model behaves like the hard one, wide enough that tokens near
        the thresholds pass gradients to them.
        """
        importance = self.importance or IMPORTANCE_KINDS[0]
        if importance not in IMPORTANCE_KINDS:
            raise PrunexError(f"unknown LTP importance {importance!r}; use one of {IMPORTANCE_KINDS}")
        average = 1.0 if importance == "relative" else 1.0 / max(mean_tokens, 1.0)
        final = self.final_threshold if self.final_threshold is not None else average
        temperature = self.temperature if self.temperature is not None else final * DEFAULT_TEMPERATURE_FRACTION
        min_tokens = DEFAULT_MIN_TOKENS if self.min_tokens is None else self.min_tokens
        if final <= 0 or temperature <= 0:
            raise PrunexError(f"final_threshold and temperature must be positive, got {final} and {temperature}")
        if min_tokens < 1:
            raise PrunexError(f"min_tokens must be at least 1 ([CLS] is always kept), got {min_tokens}")
        return LTPConfig(final_threshold=float(final), temperature=float(temperature), min_tokens=int(min_tokens),
                         importance=importance)

    def scaled(self, factor: float) -> LTPConfig:
        """This config with every threshold (and the soft mask's temperature) multiplied by `factor`."""
        return dataclasses.replace(self, final_threshold=self.final_threshold * factor,
                                   temperature=self.temperature * factor)


@dataclass
class DCPTrainConfig:
    """How a pruning checkpoint is trained."""

    method: str = "dcp"  # dcp (decoder KV pruning) | ltp (encoder token pruning)
    model: str = "smollm2"  # packaged model name or a local Hugging Face model dir
    text: str = "wikipedia"  # packaged corpus name or a UTF-8 text file
    steps: int = 200  # optimizer steps
    batch_size: int = 1  # sequences per step
    context: int = 512  # tokens per training sequence
    lr: float = 1e-3  # learning rate of the new pruning parameters
    base_lr: float = 2e-5  # learning rate of the base model (only with train="all")
    train: str = "heads"  # heads: only the pruning parameters; all: the whole model
    sparsity_weight: float = 0.3  # weight of the sparsity loss (mean keep probability)
    loss: str = "lm"  # lm: next-token cross-entropy; distill: KL from the dense model's next-token distribution
    alpha_start: float = 1.0  # alpha-sigmoid alpha at step 0 (1 = sigmoid)
    alpha_end: float = 8.0  # alpha at the last step (cosine schedule in between)
    seed: int = 0
    threads: int = 0  # torch threads; 0 = torch's default
    device: str = "auto"  # auto (CUDA when there is a GPU) | cpu | cuda
    save_every: float = 300.0  # seconds between saves of the resume state


@dataclass
class ScorerTrainConfig:
    """How a learned K/V scorer is fitted (`prunex train scorer`)."""

    method: str = "scorer"
    model: str = "smollm2"  # packaged model name or a local Hugging Face model dir
    texts: list[str] = dataclasses.field(default_factory=lambda: ["wikipedia", "speeches", "debates"])
    context: int = 1024  # tokens per window
    windows: int = 48  # training windows, spread evenly over `texts` (each source's train split)
    validation_windows: int = 2  # per source, to choose the recent share of the budget
    target_kv: float = 0.125  # the kept fraction the recent share is chosen at, recorded as the default budget
    target_window: int = 16  # a token's target: the most attention a query at least this far ahead pays it
    ridge: float = 1e-2  # L2 weight of the least-squares fit, relative to the features' mean square
    recent_fractions: list[float] = dataclasses.field(default_factory=lambda: [0.25, 0.5, 0.75])  # ranked rule
    prior_weights: list[float] = dataclasses.field(default_factory=lambda: [0.5, 1.0, 2.0])  # attention rule
    sink_tokens: int = 4
    seed: int = 0  # how the sources' documents are shuffled into train / validation / test
    threads: int = 0  # torch threads; 0 = torch's default
    save_every: float = 300.0  # seconds between saves of the resume state


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as a JSON-ready dict."""
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a dataclass from a dict, refusing keys it does not know."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise PrunexError(f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(names)}")
    return cls(**data)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a versioned JSON file (the version is added as `format_version`)."""
    Path(path).write_text(json.dumps({"format_version": FORMAT_VERSION, **data}, indent=2) + "\n")


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Read a versioned JSON file written by `write_json`, refusing newer formats."""
    path = Path(path)
    if not path.is_file():
        raise PrunexError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PrunexError(f"{path} is not valid JSON ({err}); is it a prunex {what}?") from err
    version = data.pop("format_version", None)
    if not isinstance(version, int):
        raise PrunexError(f"{path} has no format_version; it was not written by prunex")
    if version > FORMAT_VERSION:
        raise PrunexError(
            f"{path} is format version {version}, this prunex reads up to {FORMAT_VERSION}: upgrade prunex"
        )
    return data


