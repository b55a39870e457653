"""The model a server runs: a decoder runtime or an encoder classifier, loaded from an exported dir, a checkpoint,
a model name or the built-in default."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prunex.errors import PrunexError
from prunex.runtime.classifier import Classifier
from prunex.runtime.runtime import Runtime

if TYPE_CHECKING:
    from prunex.prune.policy_spec import PolicySpec


@dataclass
class ServedModel:
    """What the server runs: a decoder runtime or an encoder classifier, under a name clients use."""

    name: str
    runtime: Runtime | None = None
    classifier: Classifier | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def context(self) -> int | None:
        if self.runtime is not None:
            return self.runtime.manifest.max_positions or None
        return self.classifier.manifest.max_length if self.classifier is not None else None


def load_served_model(source: str | None, device: str = "auto", threads: int | None = None,
                      max_batch: int = 16, name: str | None = None,
                      policy: PolicySpec | None = None) -> ServedModel:
    """An exported dir (decoder or encoder), or a checkpoint / model name / None (the built-in default) exported
    once into the cache, loaded for serving; `policy` (window, sinks, h2o, tova) bounds every request's KV cache."""
    from prunex.export.cached import cached_export
    from prunex.format import manifest_kind
    from prunex.loading import resolve_source

    exported = resolve_source(source).kind == "exported"
    scores = policy is not None and policy.needs_attention_scores  # a checkpoint is exported with what it needs
    directory = Path(source) if exported else cached_export(source, False, attention_scores=scores)
    name = name or (directory.name if exported else Path(source).name if source else "prunex")
    if manifest_kind(directory) == "encoder":
        if policy is not None:
            raise PrunexError(f"{directory} is an encoder: --policy bounds a decoder's KV cache")
        return ServedModel(name, classifier=Classifier(directory, device=device, threads=threads))
    runtime = Runtime(directory, device=device, threads=threads, max_batch=max_batch, policy=policy)
    return ServedModel(name, runtime=runtime)
