"""PyTorch CPU throughput of a hard-pruned LTP classifier against its dense stage-1 model, side by side."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prunex.data.batching import encode_texts
from prunex.data.labelled import split_labelled
from prunex.eval.accuracy import _dense_reference, measure
from prunex.loading import load_ltp


@dataclass
class ClassifyBench:
    task: str
    split: str
    examples: int
    batch_size: int
    threads: int
    repeats: int
    pruned_examples_per_s: float  # median over repeats
    dense_examples_per_s: float  # median over repeats
    speedup: float  # pruned / dense throughput
    relative_flops: float  # pruned / dense FLOPs on the same examples
    pruned_accuracy: float
    dense_accuracy: float

    def to_dict(self) -> dict:
        return asdict(self)


def _timed(run) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def bench_classify(
    checkpoint: str | Path, task: str, split: str = "test", batch_size: int = 16, repeats: int = 3,
    limit: int | None = None,
) -> ClassifyBench:
    """Time the pruned and the dense model over the same examples, alternating, `repeats` times each."""
    classifier = load_ltp(checkpoint)[0]
    dense_model, _ = _dense_reference(classifier)
    data = split_labelled(task, split, classifier.info.get("split_seed", 0))
    texts, labels = data.texts[:limit], data.labels[:limit]
    encoded = encode_texts(classifier.tokenizer, texts, classifier.info.get("max_length") or 512)
    pruned_times, dense_times = [], []
    for _ in range(repeats):  # alternate so that machine noise hits both alike
        seconds, pruned = _timed(lambda: measure(classifier, encoded, labels, batch_size=batch_size))
        pruned_times.append(seconds)
        seconds, dense = _timed(lambda: measure(dense_model, encoded, labels, "dense", batch_size))
        dense_times.append(seconds)
    pruned_rate = len(encoded) / statistics.median(pruned_times)
    dense_rate = len(encoded) / statistics.median(dense_times)
    return ClassifyBench(
        task=task, split=split, examples=len(encoded), batch_size=batch_size, threads=torch.get_num_threads(),
        repeats=repeats, pruned_examples_per_s=pruned_rate, dense_examples_per_s=dense_rate,
        speedup=pruned_rate / dense_rate, relative_flops=pruned.relative_flops,
        pruned_accuracy=pruned.accuracy, dense_accuracy=dense.accuracy,
    )
