"""Accuracy of an LTP classifier with its pruning, against the stage-1 dense model, with the FLOPs saved.

FLOPs are counted per example for the encoder layers as they run (see `prunex.prune.encoder_forward.
layer_flops`): with pruning each layer works on the tokens it really receives and keeps; embeddings and the
classifier head are left out. `relative_flops` = mean pruned FLOPs / mean dense FLOPs over the examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prunex.console import progress
from prunex.data.batching import encode_texts, length_sorted_batches, pad_batch
from prunex.data.labelled import default_split, split_labelled, task_max_length
from prunex.errors import PrunexError
from prunex.prune.encoder_forward import dense_flops
from prunex.prune.ltp import LTPClassifier


@dataclass
class Measured:
    """Sums over a set of examples under one mode."""

    examples: int
    correct: int
    tokens: float  # real input tokens
    flops: float  # as run
    dense_flops: float  # the dense model on the same inputs
    kept: list[float]  # tokens present after each layer, summed over examples

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples

    @property
    def relative_flops(self) -> float:
        return self.flops / self.dense_flops

    def tokens_kept_per_layer(self) -> list[float]:
        return [round(k / self.examples, 2) for k in self.kept]


@dataclass
class AccuracyReport:
    task: str
    split: str
    examples: int
    accuracy: float  # with the checkpoint's pruning
    dense_accuracy: float  # the stage-1 dense model (see dense_source)
    dense_source: str  # "stage-1 model" (dense.safetensors, or the model itself after the base stage)
    #                    or "same weights, no pruning" (a classifier given without its checkpoint)
    relative_flops: float  # pruned / dense encoder FLOPs per example
    gflops: float  # mean pruned GFLOPs per example
    dense_gflops: float  # mean dense GFLOPs per example
    mean_tokens: float  # mean real input tokens per example
    tokens_kept_per_layer: list[float]  # mean tokens present after each layer
    stage: str  # the checkpoint's stage: base (no pruning), soft or hard

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def measure(
    classifier: LTPClassifier,
    encoded: Sequence[Sequence[int]],
    labels: Sequence[int],
    mode: str | None = None,
    batch_size: int = 16,
    show_progress: bool = False,
    description: str = "eval",
) -> Measured:
    """Run `classifier` (in eval mode) over tokenized examples in length-sorted batches."""
    if not encoded:
        raise PrunexError("no examples to evaluate")
    was_training = classifier.training
    classifier.eval()
    pad_id = classifier.tokenizer.pad_token_id if classifier.tokenizer is not None else 0
    correct, flops, dense, tokens = 0, 0.0, 0.0, 0.0
    kept = torch.zeros(classifier.adapter.num_layers, dtype=torch.float64)
    device = next(classifier.model.parameters()).device
    batches = list(length_sorted_batches(encoded, batch_size))

    for batch in progress(batches, description, enabled=show_progress):
        ids, mask = pad_batch([encoded[i] for i in batch], pad_id)
        result = classifier(ids.to(device), mask.to(device), mode)
        target = torch.tensor([labels[i] for i in batch], device=device)
        correct += int((result.logits.argmax(-1) == target).sum())
        flops += float(result.flops.sum())
        dense += float(dense_flops(classifier.adapter, result.lengths).sum())
        tokens += float(result.lengths.sum())
        kept += result.kept.sum(0).to(torch.float64).cpu()
    classifier.train(was_training)
    return Measured(len(encoded), correct, tokens, flops, dense, kept.tolist())


def _as_classifier(source: str | Path | LTPClassifier) -> LTPClassifier:
    if isinstance(source, LTPClassifier):
        return source
    from prunex.loading import load_ltp

    return load_ltp(source)[0]


def _dense_reference(classifier: LTPClassifier) -> tuple[LTPClassifier, str]:
    """The stage-1 dense model stored with the checkpoint, else the same weights without pruning."""
    from prunex.checkpoints.ltp import DENSE_FILE
    from prunex.loading import load_ltp

    checkpoint = classifier.info.get("checkpoint")
    if classifier.stage == "base":
        return classifier, "stage-1 model (this model)"
    if checkpoint and (Path(checkpoint) / DENSE_FILE).is_file():
        return load_ltp(checkpoint, dense=True)[0], "stage-1 model"
    return classifier, "same weights, no pruning"


def evaluate_accuracy(
    checkpoint_or_model: str | Path | LTPClassifier,
    task: str,
    split: str | None = None,
    *,
    batch_size: int = 16,
    limit: int | None = None,
    seed: int | None = None,
    max_length: int | None = None,
    show_progress: bool = False,
) -> AccuracyReport:
    """Accuracy of an LTP checkpoint (dir or loaded classifier) on a task split, with dense accuracy and FLOPs.

    The split seed and max length default to the checkpoint's own (so its test split is the one it never
    trained on); split None: the test split of a packaged task or of the file the checkpoint was trained on,
    every example of any other file (see `default_split`; the report names it); `limit` keeps the first N.
    """
    classifier = _as_classifier(checkpoint_or_model)
    if classifier.tokenizer is None:
        raise PrunexError("the classifier has no tokenizer; load it with prunex.checkpoints.ltp.load_ltp")
    seed = classifier.info.get("split_seed", 0) if seed is None else seed
    split = split or default_split(task, classifier.info.get("task"))
    max_length = max_length or classifier.info.get("max_length") or task_max_length(task)
    data = split_labelled(task, split, seed)
    if data.num_labels != len(classifier.label_names):
        raise PrunexError(
            f"task {task!r} has {data.num_labels} labels but the classifier has {len(classifier.label_names)} "
            f"({', '.join(classifier.label_names)}): evaluate it on the task it was trained on "
            f"({classifier.info.get('task', 'see pruning.json')})"
        )
    texts, labels = data.texts, data.labels
    if limit is not None:
        texts, labels = texts[:limit], labels[:limit]
    encoded = encode_texts(classifier.tokenizer, texts, max_length)
    pruned = measure(classifier, encoded, labels, batch_size=batch_size, show_progress=show_progress)
    dense_model, dense_source = _dense_reference(classifier)
    if dense_model is classifier and classifier.inference_mode == "dense":
        dense = pruned
    else:
        dense = measure(dense_model, encoded, labels, "dense", batch_size, show_progress, "dense")
    return AccuracyReport(
        task=task,
        split=split,
        examples=pruned.examples,
        accuracy=pruned.accuracy,
        dense_accuracy=dense.accuracy,
        dense_source=dense_source,
        relative_flops=pruned.relative_flops,
        gflops=pruned.flops / pruned.examples / 1e9,
        dense_gflops=pruned.dense_flops / pruned.examples / 1e9,
        mean_tokens=pruned.tokens / pruned.examples,
        tokens_kept_per_layer=pruned.tokens_kept_per_layer(),
        stage=classifier.stage,
    )
