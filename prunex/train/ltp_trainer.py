"""Training Learned Token Pruning in three stages, each ending in a checkpoint-ready state.

1. base: fine-tune the dense classifier on the task (the stage-1 model, kept as the dense reference).
2. soft: learn the per-layer threshold offsets (own optimizer group, higher learning rate) together with the
   model, under the soft mask and the loss cross-entropy + lambda * sum over layers of the mean soft mask.
3. hard: freeze the thresholds, remove tokens physically, fine-tune the model to the pruned computation.

`stage="all"` runs the three in one go; a single later stage continues from the previous stage's checkpoint
dir (given as `model`), with the same task, split seed and input length.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_model

from prunex.checkpoints.ltp import DENSE_FILE, dense_weights_file, read_ltp_meta, save_ltp
from prunex.checkpoints.meta import CheckpointMeta
from prunex.config import LTP_STAGES, LTPConfig, to_dict
from prunex.data.batching import encode_texts, pad_batch
from prunex.data.labelled import TASKS, split_labelled, task_max_length
from prunex.errors import PrunexError
from prunex.eval.accuracy import measure
from prunex.loading import load_ltp
from prunex.models.encoder_adapters import encoder_adapter
from prunex.models.encoders import LoadedClassifier, load_classifier
from prunex.prune.ltp import LTPClassifier, LTPThresholds
from prunex.train.progress import TrainProgress

STAGE_CHOICES = (*LTP_STAGES, "all")
_PREVIOUS = {"soft": "base", "hard": "soft"}
_TRAIN_MODE = {"base": "dense", "soft": "soft", "hard": "hard"}

logger = logging.getLogger(__name__)


@dataclass
class LTPTrainConfig:
    """How an LTP checkpoint is trained."""

    model: str = "minilm"  # base/all: minilm, tiny-bert, tiny-roberta or a HF dir; soft/hard: previous stage's dir
    task: str = "bbc"  # rotten-tomatoes | bbc | a CSV/JSONL file with `text` and `label`
    stage: str = "all"  # base | soft | hard | all
    steps: int = 100  # optimizer steps per stage
    batch_size: int = 16  # examples per step
    max_length: int = 0  # tokens per input (longer ones are truncated); 0: the task's (bbc 512, rotten-tomatoes 128)
    lr: float = 2e-4  # encoder and head (warm-up, then linear decay); high for CPU-sized runs of ~100 steps:
    #                   MiniLM, rotten-tomatoes, 40 x 32: 75.5% validation at 2e-4, 64% at 1e-4, 59% at 5e-5
    threshold_lr: float = 1e-2  # learning rate of the threshold offsets (soft stage; units of final_threshold)
    lam: float = 0.1  # lambda: weight of the sum over layers of the mean soft mask (soft stage)
    warmup: float = 0.1  # fraction of a stage's steps spent warming up the encoder's learning rate
    weight_decay: float = 0.01  # AdamW weight decay of the encoder and head
    eval_examples: int = 0  # validation examples measured after each stage; 0: the whole validation split
    seed: int = 0  # data split (base stage), example order and dropout
    threads: int = 0  # torch threads; 0: torch's default


@dataclass
class _Run:
    """What the stages share."""

    classifier: LTPClassifier
    base: LoadedClassifier  # the pretrained model: id and hash recorded in the checkpoint
    task: str
    split_seed: int
    max_length: int
    train: tuple[list[list[int]], tuple[int, ...]]  # token ids, labels
    validation: tuple[list[list[int]], tuple[int, ...]]
    figures: dict[str, Any] = field(default_factory=dict)
    dense_weights: Path | None = None  # the stage-1 model's file (None while it is the model being trained)


def _task_id(task: str) -> str:
    """Packaged task names as they are; a user's file as an absolute path."""
    return task if task in TASKS else str(Path(task).expanduser().resolve())


def _check(config: LTPTrainConfig) -> None:
    if config.stage not in STAGE_CHOICES:
        raise PrunexError(f"unknown stage {config.stage!r}; use one of {', '.join(STAGE_CHOICES)}")
    for name in ("steps", "batch_size"):
        if getattr(config, name) < 1:
            raise PrunexError(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.lam < 0 or config.lr <= 0 or config.threshold_lr <= 0:
        raise PrunexError("lambda must be >= 0 and the learning rates > 0")


def _encode(tokenizer: Any, task: str, split: str, seed: int, max_length: int, limit: int = 0):
    data = split_labelled(task, split, seed)
    texts, labels = data.texts, data.labels
    if limit:
        texts, labels = texts[:limit], labels[:limit]
    return encode_texts(tokenizer, texts, max_length), labels, data.label_names


def _fresh_run(config: LTPTrainConfig, ltp: LTPConfig | None) -> _Run:
    task = _task_id(config.task)
    names = split_labelled(task, "train", config.seed).label_names
    base = load_classifier(config.model, len(names))
    classifier_limit = encoder_adapter(base.model).max_length
    max_length = config.max_length or min(task_max_length(task), classifier_limit)
    if max_length > classifier_limit:
        raise PrunexError(f"max length {max_length} exceeds {config.model}'s {classifier_limit} positions")
    train_ids, train_labels, _ = _encode(base.tokenizer, task, "train", config.seed, max_length)
    mean_tokens = sum(len(ids) for ids in train_ids) / len(train_ids)
    thresholds = LTPThresholds(base.model.config.num_hidden_layers, (ltp or LTPConfig()).resolved(mean_tokens))
    classifier = LTPClassifier(
        base.model, thresholds, tokenizer=base.tokenizer, stage="base", label_names=list(names),
        info={"task": task, "split_seed": config.seed, "max_length": max_length},
    )
    validation = _encode(base.tokenizer, task, "validation", config.seed, max_length, config.eval_examples)[:2]
    return _Run(classifier, base, task, config.seed, max_length, (train_ids, train_labels), validation)


def _continued_run(config: LTPTrainConfig, ltp: LTPConfig | None, stage: str) -> _Run:
    previous = Path(config.model)
    if not previous.is_dir():
        raise PrunexError(
            f"--stage {stage} continues from the {_PREVIOUS[stage]} stage's checkpoint: give its dir as --model "
            f"(got {config.model!r})"
        )
    meta = read_ltp_meta(previous)
    if meta.training["stage"] != _PREVIOUS[stage]:
        raise PrunexError(
            f"{previous} is a {meta.training['stage']!r}-stage checkpoint; --stage {stage} needs a "
            f"{_PREVIOUS[stage]!r}-stage one"
        )
    task = _task_id(config.task)
    if task != meta.training["task"]:
        task = meta.training["task"]
        raise PrunexError(f"{previous} was trained on task {task!r}: pass --task {task}")
    classifier, base = load_ltp(previous)
    if ltp is not None and (ltp.final_threshold is not None or ltp.temperature is not None):
        if stage == "hard":
            raise PrunexError("the thresholds are frozen in the hard stage; set them when training the soft stage")
        old = classifier.thresholds.config
        final = ltp.final_threshold if ltp.final_threshold is not None else old.final_threshold
        resolved = LTPConfig(final, ltp.temperature).resolved(1.0)
        classifier.thresholds = LTPThresholds(classifier.adapter.num_layers, resolved)
    seed, max_length = meta.training["split_seed"], meta.training["max_length"]
    train_ids, train_labels, _ = _encode(base.tokenizer, task, "train", seed, max_length)
    validation = _encode(base.tokenizer, task, "validation", seed, max_length, config.eval_examples)[:2]
    run = _Run(classifier, base, task, seed, max_length, (train_ids, train_labels), validation)
    run.figures = dict(meta.training.get("figures", {}))
    run.dense_weights = dense_weights_file(previous)
    return run


def _lr_factor(steps: int, warmup: float):
    warm = max(1, round(warmup * steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (steps - step) / max(steps - warm, 1))

    return factor


def _train_stage(run: _Run, stage: str, config: LTPTrainConfig, show_progress: bool) -> dict[str, Any]:
    """Run one stage's optimizer steps, then measure it on the validation examples."""
    classifier, thresholds = run.classifier, run.classifier.thresholds
    classifier.stage = stage
    mode = _TRAIN_MODE[stage]
    if stage == "hard":
        with torch.no_grad():  # the checkpoint stores offsets as float16: train with exactly those
            thresholds.offset.copy_(thresholds.offset.half().float())
    thresholds.offset.requires_grad_(stage == "soft")
    model_params = [p for p in classifier.model.parameters() if p.requires_grad]
    groups = [{"params": model_params, "lr": config.lr, "weight_decay": config.weight_decay}]
    factors = [_lr_factor(config.steps, config.warmup)]
    if stage == "soft":
        groups.append({"params": [thresholds.offset], "lr": config.threshold_lr, "weight_decay": 0.0})
        factors.append(lambda step: 1.0)
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
    train_ids, train_labels = run.train
    generator = torch.Generator().manual_seed(config.seed + LTP_STAGES.index(stage))
    order = torch.randperm(len(train_ids), generator=generator).tolist()
    pad_id = classifier.tokenizer.pad_token_id

    if show_progress:
        logger.info("ltp: stage %s (%s forward), %d steps x %d", stage, mode, config.steps, config.batch_size)
    classifier.train()
    history: list[dict[str, float]] = []
    started = time.time()
    with TrainProgress(config.steps, enabled=show_progress) as progress:
        for step in range(config.steps):
            picks = [order[(step * config.batch_size + i) % len(order)] for i in range(config.batch_size)]
            ids, mask = pad_batch([train_ids[i] for i in picks], pad_id)  # (B, T) each
            target = torch.tensor([train_labels[i] for i in picks])  # (B,)
            result = classifier(ids, mask, mode)
            ce = F.cross_entropy(result.logits, target)
            loss = ce + config.lam * result.mask_loss if stage == "soft" else ce
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model_params, 1.0)
            optimizer.step()
            scheduler.step()
            kept = float((result.kept.sum(0).double() / result.lengths.sum()).mean())
            figures = {"loss": loss.item(), "ce": ce.item(),
                       "acc": float((result.logits.argmax(-1) == target).float().mean()), "kept": kept}
            history.append(figures)
            progress.update(figures)
    seconds = time.time() - started
    thresholds.offset.requires_grad_(False)
    classifier.eval()

    val_ids, val_labels = run.validation
    measured = measure(classifier, val_ids, val_labels, show_progress=show_progress, description=f"{stage} val")
    tail = history[-10:]
    return {
        "steps": config.steps,
        "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / config.steps, 3),
        "loss": round(sum(h["loss"] for h in tail) / len(tail), 4),
        "train_accuracy": round(sum(h["acc"] for h in tail) / len(tail), 4),
        "thresholds": [round(t, 6) for t in thresholds.thresholds().tolist()],
        "validation": {
            "examples": measured.examples,
            "accuracy": round(measured.accuracy, 4),
            "relative_flops": round(measured.relative_flops, 4),
            "mean_tokens": round(measured.tokens / measured.examples, 1),
            "tokens_kept_per_layer": measured.tokens_kept_per_layer(),
        },
        "train_config": to_dict(config),
    }


def train_ltp(
    config: LTPTrainConfig, out_dir: str | Path, ltp: LTPConfig | None = None, show_progress: bool = True
) -> CheckpointMeta:
    """Train LTP stage(s) and write an LTP checkpoint to `out_dir`; returns its metadata.

    `ltp` sets the thresholds' schedule and temperature (None fields: derived from the training data, see
    `LTPConfig.resolved`); it applies when the base or soft stage starts.
    """
    _check(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    stages = LTP_STAGES if config.stage == "all" else (config.stage,)
    if stages[0] == "base":
        run = _fresh_run(config, ltp)
    else:
        if Path(out_dir).expanduser().resolve() == Path(config.model).expanduser().resolve():
            raise PrunexError("--out must differ from the previous stage's checkpoint dir given as --model")
        run = _continued_run(config, ltp, stages[0])
    for stage in stages:
        run.figures[stage] = _train_stage(run, stage, config, show_progress)
        if stage == "base" and len(stages) > 1:  # keep the stage-1 model as the dense reference
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            save_model(run.classifier.model, str(out / DENSE_FILE))
            run.dense_weights = out / DENSE_FILE
    training = {
        "stage": stages[-1],
        "task": run.task,
        "label_names": list(run.classifier.label_names),
        "split_seed": run.split_seed,
        "max_length": run.max_length,
        "config": to_dict(config),
        "figures": run.figures,
    }
    return save_ltp(out_dir, run.classifier, run.base, training, run.dense_weights)
