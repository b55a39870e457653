"""Training Learned Token Pruning in three stages, each ending in a checkpoint-ready state.

1. base: fine-tune the dense classifier on the task (the stage-1 model, kept as the dense reference).
2. soft: learn the per-layer threshold offsets (own optimizer group, higher learning rate) together with the
   model, under the soft mask and the loss cross-entropy + lambda * sum over layers of the mean soft mask.
3. hard: freeze the thresholds, remove tokens physically, fine-tune the model to the pruned computation,
   optionally distilling the dense stage-1 model's predictions (`distill` > 0).

Defaults work without tuning: stage lengths in epochs (see `prunex.train.ltp_budget`), the base stage stops on
validation accuracy, a stage no better than the majority label is an error, and `target_flops` steers lambda
and then calibrates the thresholds on validation examples (see `prunex.train.ltp_target`).

`stage="all"` runs the three in one go; a single later stage continues from the previous stage's checkpoint
dir (given as `model`), with the same task, split seed and input length. A run interrupted (end of a session,
a crash) goes on with `resume=True` from the state saved in its output dir every few minutes and at each
validation check and stage boundary (`prunex.train.resume`). Launched on N processes (`torchrun`,
`accelerate launch`) it trains data-parallel (`prunex.train.parallel`).

One module of ~470 lines on purpose: the three stages share one run's state (`_Run`), its resume points and its
validation, and reading the stage loop next to them is easier than following them across files; the budget,
the FLOPs target and the resume state live in their own modules (`ltp_budget`, `ltp_target`, `resume`).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

from prunex.checkpoints.ltp import DENSE_FILE, dense_weights_file, read_ltp_meta, save_ltp
from prunex.checkpoints.meta import CheckpointMeta
from prunex.config import LTP_STAGES, LTPConfig, to_dict
from prunex.data.batching import encode_texts, pad_batch
from prunex.data.labelled import TASKS, split_labelled, task_max_length
from prunex.devices import torch_device
from prunex.errors import PrunexError
from prunex.eval.accuracy import measure
from prunex.loading import load_ltp
from prunex.models.encoder_adapters import encoder_adapter
from prunex.models.encoders import LoadedClassifier, load_classifier
from prunex.prune.encoder_forward import dense_flops, run_encoder
from prunex.prune.ltp import LTPClassifier, LTPThresholds
from prunex.train.loop import batch_at, shuffled_order
from prunex.train.ltp_budget import EarlyStopping, StageBudget, check_beats_majority, stage_budget
from prunex.train.ltp_target import LambdaController, calibrate_thresholds, calibration_examples, on_target
from prunex.train.parallel import DataParallel
from prunex.train.progress import TrainProgress
from prunex.train.resume import TrainState

STAGE_CHOICES = (*LTP_STAGES, "all")
_PREVIOUS = {"soft": "base", "hard": "soft"}
_TRAIN_MODE = {"base": "dense", "soft": "soft", "hard": "hard"}

logger = logging.getLogger(__name__)


@dataclass
class LTPTrainConfig:
    """How an LTP checkpoint is trained. The defaults are meant to work on any task, packaged or a user's file."""

    model: str = "minilm"  # base/all: minilm, tiny-bert, tiny-roberta or a HF dir; soft/hard: previous stage's dir
    task: str = "bbc"  # rotten-tomatoes | bbc | a CSV/JSONL file with `text` and `label`
    stage: str = "all"  # base | soft | hard | all
    steps: int = 0  # optimizer steps per stage; 0: by epochs (below), the base stage stopping on validation
    base_epochs: float = 2.0  # most epochs of the base stage (it stops earlier when validation stops improving)
    prune_epochs: float = 0.25  # epochs of the soft stage and of the hard stage each
    check_epochs: float = 0.25  # base stage: validation accuracy is checked every this many epochs
    patience: int = 2  # base stage: checks without a gain before it stops (the best weights are kept)
    min_steps: int = 30  # every stage runs at least this many steps (small files)
    max_tokens: int = 100_000  # training tokens between base checks and per soft/hard stage, at most (0: no cap)
    batch_size: int = 0  # examples per step; 0: 32 for inputs of up to 128 tokens, 8 for longer ones
    max_length: int = 0  # tokens per input (longer ones are truncated); 0: the task's (bbc 512, rotten-tomatoes 128)
    lr: float = 1e-4  # encoder and head (warm-up, then linear decay over the stage's planned steps)
    threshold_lr: float = 1e-2  # learning rate of the threshold offsets (soft stage; units of final_threshold)
    target_flops: float = 0.5  # relative FLOPs wanted on validation (0: off, lambda stays `lam`)
    lam: float = 0.1  # lambda: weight of the mask loss; with a target, where the controller starts
    flops_tolerance: float = 0.01  # the threshold calibration stops at most this far under the target
    calibration_tokens: int = 50_000  # input tokens of validation examples the calibration runs on
    distill: float = 0.5  # hard stage: weight of the KL to the dense stage-1 model's predictions (0: off)
    distill_temperature: float = 2.0  # softmax temperature of that KL
    warmup: float = 0.1  # fraction of a stage's planned steps spent warming up the encoder's learning rate
    weight_decay: float = 0.01  # AdamW weight decay of the encoder and head
    eval_examples: int = 0  # validation examples measured after each stage; 0: the whole validation split
    seed: int = 0  # data split (base stage), example order and dropout
    threads: int = 0  # torch threads; 0: torch's default
    device: str = "auto"  # auto (CUDA when PyTorch sees a GPU), cpu or cuda
    save_every: float = 300.0  # seconds between saves of the resume state (also at each check and stage end)

    def batch_for(self, max_length: int) -> int:
        """The batch size used for inputs of up to `max_length` tokens."""
        return self.batch_size or (32 if max_length <= 128 else 8)


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
    for name in ("steps", "batch_size", "min_steps", "patience"):
        if getattr(config, name) < 0:
            raise PrunexError(f"{name} must not be negative, got {getattr(config, name)}")
    if min(config.base_epochs, config.prune_epochs, config.check_epochs) <= 0:
        raise PrunexError("the epochs of each stage and between checks must be positive")
    if config.lam < 0 or config.lr <= 0 or config.threshold_lr <= 0:
        raise PrunexError("lambda must be >= 0 and the learning rates > 0")
    if not 0 <= config.target_flops <= 1:
        raise PrunexError(f"--target-flops is relative to the dense model, in (0, 1]; got {config.target_flops}")
    if not 0 <= config.distill <= 1:
        raise PrunexError(f"the distillation weight must be in [0, 1], got {config.distill}")


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
    if ltp is not None and any(v is not None for v in (ltp.final_threshold, ltp.temperature, ltp.min_tokens)):
        if stage == "hard":
            raise PrunexError("the thresholds are frozen in the hard stage; set them when training the soft stage")
        old = classifier.thresholds.config
        final = ltp.final_threshold if ltp.final_threshold is not None else old.final_threshold
        floor = ltp.min_tokens if ltp.min_tokens is not None else old.min_tokens
        resolved = LTPConfig(final, ltp.temperature, floor, old.importance or "absolute").resolved(1.0)
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


def _teacher(run: _Run) -> torch.nn.Module:
    """The dense stage-1 classifier, frozen, for distillation in the hard stage."""
    if run.dense_weights is None:
        raise PrunexError("distillation needs the stage-1 dense model: train the base stage first")
    teacher = copy.deepcopy(run.classifier.model)
    load_model(teacher, str(run.dense_weights))
    teacher.eval().requires_grad_(False)
    return teacher


def _distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened predictions, times T^2 (Hinton et al.)."""
    student = F.log_softmax(logits / temperature, dim=-1)  # (B, C)
    teacher = F.log_softmax(teacher_logits / temperature, dim=-1)  # (B, C)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def _validate(run: _Run, stage: str, show_progress: bool) -> dict[str, Any]:
    val_ids, val_labels = run.validation
    measured = measure(run.classifier, val_ids, val_labels, show_progress=show_progress, description=f"{stage} val")
    return {
        "examples": measured.examples,
        "accuracy": round(measured.accuracy, 4),
        "relative_flops": round(measured.relative_flops, 4),
        "mean_tokens": round(measured.tokens / measured.examples, 1),
        "tokens_kept_per_layer": measured.tokens_kept_per_layer(),
    }


def _calibrate(run: _Run, config: LTPTrainConfig) -> dict[str, Any]:
    val_ids, val_labels = run.validation
    count = calibration_examples(val_ids, config.calibration_tokens)
    found = calibrate_thresholds(run.classifier, val_ids[:count], val_labels[:count], config.target_flops,
                                 tolerance=config.flops_tolerance)
    if abs(found.relative_flops - config.target_flops) > config.flops_tolerance:
        logger.warning("thresholds reach relative FLOPs %.3f, not the target %.3f: the floor of %d tokens a row "
                    "keeps more (lower --min-tokens to go further)", found.relative_flops, config.target_flops,
                    run.classifier.thresholds.min_tokens)
    return found.to_dict()


def _saved_stage(run: _Run, stage: str, step: int, loop: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `TrainState` saves at `step` of `stage`: the weights, thresholds and finished stages' figures, and
    `loop` (optimizer, scheduler, figures so far, early stopping, lambda) when the stage is under way."""
    thresholds = run.classifier.thresholds
    return {"stage": stage, "step": step, "model": run.classifier.model.state_dict(),
            "thresholds": to_dict(thresholds.config), "offset": thresholds.offset.detach().clone(),
            "figures": dict(run.figures), "loop": loop}


def _restore_run(run: _Run, state: dict[str, Any]) -> None:
    """Put the weights, thresholds and finished stages' figures of a saved state back into `run`."""
    run.classifier.model.load_state_dict(state["model"])
    thresholds = LTPThresholds(run.classifier.adapter.num_layers, LTPConfig(**state["thresholds"]))
    thresholds.offset.data.copy_(state["offset"])
    run.classifier.thresholds = thresholds.to(state["offset"].device)
    run.figures = dict(state["figures"])


def _train_stage(run: _Run, stage: str, config: LTPTrainConfig, show_progress: bool, saver: TrainState,
                 parallel: DataParallel, resumed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one stage's optimizer steps, then measure it on the validation examples (and refuse a useless one).
    Every process runs all of it on its share of each batch (so validation and early stopping agree); the main
    one saves.

    `resumed`: the state `saver` saved when this stage was interrupted (its weights are already back)."""
    classifier, thresholds = run.classifier, run.classifier.thresholds
    classifier.stage = stage
    mode = _TRAIN_MODE[stage]
    if stage == "hard":
        with torch.no_grad():  # the checkpoint stores offsets as float16: train with exactly those
            thresholds.offset.copy_(thresholds.offset.half().float())
    thresholds.offset.requires_grad_(stage == "soft")
    train_ids, train_labels = run.train
    batch_size = config.batch_for(run.max_length)
    budget: StageBudget = stage_budget(
        stage, len(train_ids), batch_size, steps=config.steps, base_epochs=config.base_epochs,
        prune_epochs=config.prune_epochs, check_epochs=config.check_epochs, min_steps=config.min_steps,
        patience=config.patience, mean_tokens=sum(map(len, train_ids)) / len(train_ids), max_tokens=config.max_tokens,
    )
    model_params = [p for p in classifier.model.parameters() if p.requires_grad]
    groups = [{"params": model_params, "lr": config.lr, "weight_decay": config.weight_decay}]
    factors = [_lr_factor(budget.steps, config.warmup)]
    if stage == "soft":
        groups.append({"params": [thresholds.offset], "lr": config.threshold_lr, "weight_decay": 0.0})
        factors.append(lambda step: 1.0)
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
    order = shuffled_order(len(train_ids), config.seed + LTP_STAGES.index(stage))
    pad_id = classifier.tokenizer.pad_token_id
    device = next(classifier.model.parameters()).device
    controller = LambdaController(config.target_flops, config.lam) if stage == "soft" and config.target_flops else None
    teacher = _teacher(run) if stage == "hard" and config.distill > 0 else None
    teacher_adapter = encoder_adapter(teacher) if teacher is not None else None
    stopping = EarlyStopping(budget.patience) if budget.check_every else None
    best_state: dict[str, torch.Tensor] | None = None
    lam = config.lam
    history: list[dict[str, float]] = []
    steps_run, seconds_before = 0, 0.0
    if resumed is not None:
        loop = resumed["loop"]
        optimizer.load_state_dict(loop["optimizer"])
        scheduler.load_state_dict(loop["scheduler"])
        history, steps_run, seconds_before = loop["history"], resumed["step"], loop["seconds"]
        best_state, lam = loop["best_state"], loop["lam"]
        if stopping is not None:
            vars(stopping).update(loop["stopping"])
        if controller is not None:
            controller.lam, controller.flops = lam, loop["controller_flops"]

    def save(where: str) -> None:
        if not parallel.is_main:
            return
        loop = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": history,
                "seconds": seconds_before + time.time() - started, "best_state": best_state, "lam": lam,
                "stopping": dict(vars(stopping)) if stopping is not None else None,
                "controller_flops": controller.flops if controller is not None else None}
        saver.save(_saved_stage(run, stage, steps_run, loop), where)

    if show_progress:
        logger.info("ltp: stage %s (%s forward), up to %d steps x %d", stage, mode, budget.steps, batch_size)
    classifier.train()
    model = parallel.wrap(classifier)  # gradients averaged over processes
    started = time.time()
    with TrainProgress(budget.steps, enabled=show_progress and parallel.is_main, start=steps_run) as progress:
        for step in range(steps_run, budget.steps):
            picks = parallel.share(batch_at(order, step, batch_size))
            ids, mask = pad_batch([train_ids[i] for i in picks], pad_id)  # (B, T) each
            ids, mask = ids.to(device), mask.to(device)
            target = torch.tensor([train_labels[i] for i in picks], device=device)  # (B,)
            result = model(ids, mask, mode)
            ce = F.cross_entropy(result.logits, target)
            loss = ce
            if stage == "soft":  # the mask loss is a mean over the batch's tokens, however they are shared out
                loss = ce + lam * result.mask_loss * parallel.token_share(float(mask.sum()))
            elif teacher is not None:
                with torch.no_grad():
                    teacher_logits = run_encoder(teacher_adapter, ids, mask).logits  # (B, C)
                kl = _distill_loss(result.logits, teacher_logits, config.distill_temperature)
                loss = (1 - config.distill) * ce + config.distill * kl
            optimizer.zero_grad(set_to_none=True)
            parallel.backward(loss)
            torch.nn.utils.clip_grad_norm_(model_params, 1.0)
            optimizer.step()
            scheduler.step()
            steps_run = step + 1
            work = parallel.sum({"flops": float(result.flops.sum()),
                                 "dense": float(dense_flops(classifier.adapter, result.lengths).sum())})
            relative = work["flops"] / work["dense"]  # the whole batch's
            figures = {**parallel.mean({"loss": loss.item(), "ce": ce.item(),
                                        "acc": float((result.logits.argmax(-1) == target).float().mean())}),
                       "flops": relative}
            if controller is not None:
                lam = controller.update(relative)
                figures["lambda"] = lam
            history.append(figures)
            progress.update(figures)
            if stopping is not None and (steps_run % budget.check_every == 0 or steps_run == budget.steps):
                accuracy = measure(classifier, *run.validation).accuracy
                if stopping.update(steps_run, accuracy):
                    best_state = {k: v.detach().clone() for k, v in classifier.model.state_dict().items()}
                logger.info("base stage step %d: validation accuracy %.4f (best %.4f at step %d)",
                         steps_run, accuracy, stopping.best, stopping.best_step)
                classifier.train()
                if stopping.should_stop or steps_run == budget.steps:
                    break
                save(f"{stage} stage step {steps_run}, after its validation check")
            elif saver.due() and steps_run < budget.steps:
                save(f"{stage} stage step {steps_run}")
    seconds = seconds_before + time.time() - started
    thresholds.offset.requires_grad_(False)
    classifier.eval()
    if best_state is not None:
        classifier.model.load_state_dict(best_state)

    figures: dict[str, Any] = {}
    if config.target_flops and stage in ("soft", "hard"):
        before = measure(classifier, *run.validation, mode="hard").relative_flops if stage == "hard" else None
        if before is None or not on_target(before, config.target_flops, config.flops_tolerance):
            figures["calibration"] = _calibrate(run, config)
    validation = _validate(run, stage, show_progress)
    check_beats_majority(stage, validation["accuracy"], run.validation[1], train_labels)
    tail = history[-10:]
    figures.update({
        "steps": steps_run,
        "planned_steps": budget.steps,
        "batch_size": batch_size,
        "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(steps_run, 1), 3),
        "loss": round(sum(h["loss"] for h in tail) / len(tail), 4),
        "train_accuracy": round(sum(h["acc"] for h in tail) / len(tail), 4),
        "thresholds": [round(t, 6) for t in classifier.thresholds.thresholds().tolist()],
        "validation": validation,
        "train_config": to_dict(config),
    })
    if stopping is not None:
        figures["checks"] = [{"step": step, "accuracy": round(acc, 4)} for step, acc in stopping.history]
    if controller is not None:
        figures["final_lambda"] = round(lam, 5)
    if teacher is not None:
        figures["distill"] = config.distill
    return figures


def train_ltp(
    config: LTPTrainConfig, out_dir: str | Path, ltp: LTPConfig | None = None, show_progress: bool = True,
    resume: bool = False,
) -> CheckpointMeta:
    """Train LTP stage(s) and write an LTP checkpoint to `out_dir`; returns its metadata.

    `ltp` sets the thresholds' schedule and temperature (None fields: derived from the training data, see
    `LTPConfig.resolved`); it applies when the base or soft stage starts. `resume`: go on from the state an
    interrupted run with the same settings saved in `out_dir` (none there: start from the beginning).
    """
    _check(config)
    parallel = DataParallel(torch_device(config.device))  # the device checked before the (slow) model load
    device = parallel.device
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    stages = LTP_STAGES if config.stage == "all" else (config.stage,)
    saver = TrainState(out_dir, {**to_dict(config), "ltp": to_dict(ltp) if ltp is not None else None},
                       every_s=config.save_every)
    state = saver.load() if resume else None
    if resume and state is None:
        logger.info("no saved training state in %s: starting from the beginning", out_dir)
    if stages[0] == "base":
        run = _fresh_run(config, ltp)
    else:
        if Path(out_dir).expanduser().resolve() == Path(config.model).expanduser().resolve():
            raise PrunexError("--out must differ from the previous stage's checkpoint dir given as --model")
        run = _continued_run(config, ltp, stages[0])
    if state is not None:
        _restore_run(run, state)
        if stages[0] == "base" and state["stage"] != "base":  # stage "all" after its base stage
            run.dense_weights = Path(out_dir) / DENSE_FILE
        stages = stages[stages.index(state["stage"]):]
        saver.restore_rng(state)
    run.classifier.to(device)
    for index, stage in enumerate(stages):
        under_way = state is not None and state["stage"] == stage and state["loop"] is not None
        run.figures[stage] = _train_stage(run, stage, config, show_progress, saver, parallel,
                                          state if under_way else None)
        if stage == "base" and len(stages) > 1:  # keep the stage-1 model as the dense reference
            out = Path(out_dir)
            if parallel.is_main:
                out.mkdir(parents=True, exist_ok=True)
                save_model(run.classifier.model, str(out / DENSE_FILE))
            parallel.wait()  # the hard stage's teacher is read from it
            run.dense_weights = out / DENSE_FILE
        if index + 1 < len(stages) and parallel.is_main:
            saver.save(_saved_stage(run, stages[index + 1], 0), f"the start of the {stages[index + 1]} stage")
    training = {
        "stage": stages[-1],
        "task": run.task,
        "label_names": list(run.classifier.label_names),
        "split_seed": run.split_seed,
        "max_length": run.max_length,
        "config": to_dict(config),
        "figures": run.figures,
        "device": str(device),
    }
    if parallel.is_main:
        meta = save_ltp(out_dir, run.classifier, run.base, training, run.dense_weights)
        saver.finish()
    parallel.wait()
    return meta if parallel.is_main else read_ltp_meta(out_dir)
