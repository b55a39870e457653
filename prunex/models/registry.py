"""A registry of adapter classes keyed by Hugging Face `model_type`, shared by decoders and encoders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import torch

from prunex.errors import PrunexError

A = TypeVar("A")


class AdapterRegistry(Generic[A]):
    """`@registry.register("llama")` on an adapter class; `registry.adapter(model)` builds the right one."""

    def __init__(self, purpose: str) -> None:
        self.purpose = purpose  # named in the error for unsupported models
        self._classes: dict[str, type[A]] = {}

    def register(self, *model_types: str) -> Callable[[type[A]], type[A]]:
        """Class decorator: register an adapter for these model types."""

        def wrap(cls: type[A]) -> type[A]:
            for model_type in model_types:
                self._classes[model_type] = cls
            return cls

        return wrap

    def supported(self) -> list[str]:
        """The registered model types, sorted."""
        return sorted(self._classes)

    def adapter(self, model: torch.nn.Module) -> A:
        """The registered adapter for `model`, or a clear error naming the supported families."""
        model_type = model.config.model_type
        if model_type not in self._classes:
            raise PrunexError(
                f"model type {model_type!r} is not supported for {self.purpose}; supported: "
                f"{', '.join(self.supported())}"
            )
        return self._classes[model_type](model)
