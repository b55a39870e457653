"""Quality of exported dirs (fp32 or int8) run by ONNX Runtime: perplexity of decoders, accuracy of encoders.

A decoder window runs as one prompt through the step graph with logits wanted at every position, so the keep
decisions are the hard cumulative ones of `prunex eval ppl` in PyTorch; the kept share reported is the cache
left after the window (entries held / window length, over layers), not the causal average of the PyTorch
report.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from prunex.console import progress


@dataclass
class ExportedPerplexity:
    perplexity: float
    kv_kept_at_end: float  # entries held after each window / window length, averaged over layers and windows
    tokens: int  # predicted tokens
    windows: int
    context: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExportedAccuracy:
    accuracy: float
    examples: int
    mean_tokens: float  # tokens per input
    mean_tokens_kept: float  # tokens left after the last layer

    def to_dict(self) -> dict:
        return asdict(self)


def exported_perplexity(directory: str | Path, windows: torch.Tensor, threads: int | None = None,
                        show_progress: bool = True) -> ExportedPerplexity:
    """Perplexity of an exported decoder over (N, T) token windows, one window at a time."""
    from prunex.runtime.engine import DecoderEngine
    from prunex.runtime.scoring import score_prompt

    engine = DecoderEngine(directory, device="cpu", threads=threads)
    nll, kept = 0.0, 0.0
    N, T = windows.shape
    for window in progress(windows, "perplexity (onnx)", enabled=show_progress):
        score = score_prompt(engine, window.tolist())  # the server's echo + logprobs run the same function
        nll -= float(score.logprobs.token_logprobs.sum())
        kept += score.kv_entries / engine.manifest.num_layers / T
    tokens = N * (T - 1)
    return ExportedPerplexity(math.exp(nll / tokens), kept / N, tokens, N, T)


def training_task(directory: str | Path) -> str | None:
    """The task the checkpoint behind an exported encoder was trained on (None when its source is gone)."""
    import json

    from prunex.format import read_encoder_manifest

    meta = Path(read_encoder_manifest(Path(directory)).source or "-") / "pruning.json"
    if not meta.is_file():
        return None
    return json.loads(meta.read_text()).get("training", {}).get("task")


def exported_accuracy(directory: str | Path, task: str, split: str = "test", limit: int | None = None,
                      threads: int | None = None) -> ExportedAccuracy:
    """Accuracy of an exported encoder classifier on a labelled split (labels matched by name)."""
    from prunex.data.labelled import split_labelled
    from prunex.errors import PrunexError
    from prunex.runtime.classifier import Classifier

    classifier = Classifier(directory, device="cpu", threads=threads)
    data = split_labelled(task, split)
    texts, labels = list(data.texts[:limit]), list(data.labels[:limit])
    names = classifier.manifest.label_names
    if names and list(names) != list(data.label_names):
        raise PrunexError(f"{directory} predicts {names}, the task has labels {list(data.label_names)}")
    predictions = classifier.classify(texts)
    correct = sum(p.label_id == y for p, y in zip(predictions, labels))
    return ExportedAccuracy(
        accuracy=correct / len(texts), examples=len(texts),
        mean_tokens=float(np.mean([p.tokens for p in predictions])),
        mean_tokens_kept=float(np.mean([p.tokens_kept for p in predictions])),
    )
