"""ONNX Runtime throughput of an LTP classifier's export against the dense export of the same classifier.

Four engines run the same examples through the runtime (`prunex.runtime.classifier.Classifier`): the LTP
export (token removal in the graph) and the dense export, each in fp32 and dynamic int8. Exports and int8
copies are made once and cached under PRUNEX_CACHE (keyed by the checkpoint's files and the exporter's and
quantizer's code). Each batch size is timed in `repeats` rounds of all engines in turn, so machine noise hits
them alike; rates are medians and each ratio is the median of the rounds' own ratios.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prunex.cache import cache_dir
from prunex.data.labelled import default_split, split_labelled

log = logging.getLogger(__name__)

ENGINES = ("pruned_fp32", "dense_fp32", "pruned_int8", "dense_int8")
RATIOS = {  # name: (numerator engine, denominator engine)
    "pruned_vs_dense_fp32": ("pruned_fp32", "dense_fp32"),
    "pruned_vs_dense_int8": ("pruned_int8", "dense_int8"),
    "pruned_int8_vs_dense_fp32": ("pruned_int8", "dense_fp32"),
}


@dataclass
class OrtClassifyConfig:
    """What `prunex bench classify --engine ort` measures."""

    task: str | None = None  # None: the task the checkpoint was trained on
    split: str | None = None  # None: test for a packaged task or the training file, all for another file
    batches: list[int] = field(default_factory=lambda: [1, 16])
    repeats: int = 3
    limit: int | None = None  # first N examples of the split
    threads: int = 1  # ONNX Runtime intra-op threads for every engine


def _digest(checkpoint: Path, *packages: str) -> str:
    """A key that changes with the checkpoint's files and the code of the given prunex packages."""
    import prunex

    digest = hashlib.sha256(str(checkpoint.resolve()).encode())
    for file in sorted(checkpoint.glob("*")):
        digest.update(file.name.encode() + str(file.stat().st_size).encode() + str(file.stat().st_mtime).encode())
    for package in packages:
        for code in sorted((Path(prunex.__file__).parent / package).glob("*.py")):
            digest.update(code.read_bytes())
    return digest.hexdigest()[:12]


def exported_engines(checkpoint: str | Path, progress=print) -> dict[str, Path]:
    """The four exported dirs of an LTP checkpoint (pruned/dense x fp32/int8), made once and cached."""
    from prunex.export.encoder import export_encoder
    from prunex.format import is_exported_dir
    from prunex.loading import load_ltp
    from prunex.quantize.int8 import QuantizeConfig, quantize_dir

    checkpoint = Path(checkpoint)
    key = _digest(checkpoint, "export", "quantize", "prune")
    dirs = {name: cache_dir("exports") / f"{checkpoint.name}-ltp-{name}-{key}" for name in ENGINES}
    loaded = None
    for dense in (False, True):
        kind = "dense" if dense else "pruned"
        fp32, int8 = dirs[f"{kind}_fp32"], dirs[f"{kind}_int8"]
        if not is_exported_dir(fp32):
            progress(f"exporting {checkpoint} ({kind}) to {fp32} ...")
            loaded = loaded or load_ltp(checkpoint)
            classifier, base = loaded
            export_encoder(classifier, fp32, dense=dense, force=True, source=str(checkpoint),
                           base_model=base.model_id, base_model_hash=base.weights_hash)
        if not is_exported_dir(int8):
            # speed is measured here: the accuracy check runs on a few examples and never refuses
            quantize_dir(fp32, int8, QuantizeConfig(eval_limit=16, accept_cost=True, overwrite=True), progress=progress)
    return dirs


def _timed_pass(classifier, texts: list[str]) -> tuple[float, np.ndarray, float]:
    """Seconds to classify `texts`, the predicted ids and the mean tokens left after the last layer."""
    started = time.perf_counter()
    logits, kept, _ = classifier.logits(texts)
    return time.perf_counter() - started, logits.argmax(-1), float(kept[:, -1].mean())


def bench_classify_ort(checkpoint: str | Path, config: OrtClassifyConfig, progress=print) -> dict:
    """Examples/s of the four engines at each batch size, side by side, with accuracy and the ratios."""
    from prunex.checkpoints.ltp import read_ltp_meta
    from prunex.runtime.classifier import Classifier

    training = read_ltp_meta(checkpoint).training
    task = config.task or training["task"]
    split = config.split or default_split(task, training["task"])
    data = split_labelled(task, split, training["split_seed"])
    texts, labels = list(data.texts[: config.limit]), np.array(data.labels[: config.limit])
    dirs = exported_engines(checkpoint, progress)
    rows = []
    for batch in config.batches:
        engines = {name: Classifier(path, device="cpu", threads=config.threads, max_batch=batch,
                                    max_tokens_per_batch=batch * 100_000) for name, path in dirs.items()}
        for classifier in engines.values():  # warm-up: first-run allocations and graph optimisations
            classifier.logits(texts[: max(batch, 2)])
        rounds: list[dict[str, float]] = []
        figures: dict[str, dict] = {}
        for round_index in range(config.repeats):
            seconds = {}
            for name, classifier in engines.items():
                seconds[name], predicted, kept = _timed_pass(classifier, texts)
                figures[name] = {"accuracy": round(float((predicted == labels).mean()), 4),
                                 "tokens_kept_after_last_layer": round(kept, 1)}
            rounds.append({name: len(texts) / s for name, s in seconds.items()})
            progress(f"batch {batch}, round {round_index + 1}: " +
                     ", ".join(f"{name} {rate:.2f} ex/s" for name, rate in rounds[-1].items()))
        row = {"batch": batch, "engines": {}}
        for name in ENGINES:
            row["engines"][name] = {"examples_per_s": round(statistics.median(r[name] for r in rounds), 3),
                                    **figures[name]}
        for ratio, (top, bottom) in RATIOS.items():
            row[ratio] = round(statistics.median(r[top] / r[bottom] for r in rounds), 3)
        rows.append(row)
    from prunex.eval.accuracy import evaluate_accuracy

    report = evaluate_accuracy(checkpoint, task, split, limit=config.limit)  # FLOPs counted the LTP way
    return {"checkpoint": str(checkpoint), "task": task, "split": split, "examples": len(texts),
            "mean_tokens": round(report.mean_tokens, 1), "relative_flops": round(report.relative_flops, 4),
            "torch_accuracy": round(report.accuracy, 4), "torch_dense_accuracy": round(report.dense_accuracy, 4),
            "threads": config.threads, "repeats": config.repeats,
            "dirs": {name: str(path) for name, path in dirs.items()}, "rows": rows}
