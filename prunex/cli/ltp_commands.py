"""Plain functions behind the LTP (encoder token pruning) commands of `prunex`; main.py only parses options."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import typer

from prunex.errors import PrunexError


def train_ltp_command(
    *,
    out: Path,
    model: str,
    task: str,
    stage: str,
    lam: float | None,
    steps: int | None,
    context: int,
    batch_size: int | None,
    lr: float | None,
    threads: int,
    seed: int,
    force: bool,
    prepare_out: Callable[[Path, bool, bool], None],
    target_flops: float | None = None,
    model_lr: float | None = None,
    epochs: float | None = None,
    prune_epochs: float | None = None,
    distill: float | None = None,
    min_tokens: int | None = None,
    device: str = "auto",
    resume: bool = False,
    save_every: float = 300.0,
) -> None:
    """`prunex train --method ltp`: train stage(s) and print where the checkpoint went with its figures.

    `context` caps the tokens per input (the task's own length when larger); `lr` is the thresholds' learning
    rate, as `--lr` is the pruning parameters' for DCP; `prepare_out` checks/clears --out (see main.py);
    `resume` goes on from the state an interrupted run saved there.
    A `--lambda` without `--target-flops` trains with that fixed lambda and no threshold calibration; None
    elsewhere means the default of `LTPTrainConfig`.
    """
    from prunex.config import LTPConfig
    from prunex.data.labelled import load_labelled, task_max_length
    from prunex.train.ltp_trainer import STAGE_CHOICES, LTPTrainConfig, train_ltp
    from prunex.train.parallel import launched_as_main

    if stage not in STAGE_CHOICES:
        raise PrunexError(f"--stage {stage!r} is not one of {', '.join(STAGE_CHOICES)}")
    if stage in ("soft", "hard") and Path(model).expanduser().resolve() == out.expanduser().resolve():
        raise PrunexError("--out must differ from the previous stage's checkpoint dir given as --model")
    if target_flops is not None and target_flops <= 0:
        raise PrunexError("--target-flops must be above 0 (relative to the dense model, e.g. 0.5)")
    load_labelled(task)  # refuse an unknown task or a bad file before --out is touched
    prepare_out(out, force, resume)
    defaults = LTPTrainConfig()
    given = {
        "steps": steps, "batch_size": batch_size, "lr": model_lr, "base_epochs": epochs,
        "prune_epochs": prune_epochs, "distill": distill,
        "lam": lam, "target_flops": 0.0 if lam is not None and target_flops is None else target_flops,
    }
    config = LTPTrainConfig(
        model=model, task=task, stage=stage, max_length=min(context, task_max_length(task)),
        threshold_lr=defaults.threshold_lr if lr is None else lr, seed=seed, threads=threads, device=device,
        save_every=save_every,
        **{name: getattr(defaults, name) if value is None else value for name, value in given.items()},
    )
    meta = train_ltp(config, out, LTPConfig(min_tokens=min_tokens) if min_tokens is not None else None,
                     resume=resume)
    if not launched_as_main():
        return
    last = meta.training["figures"][meta.training["stage"]]["validation"]
    typer.echo(
        f"wrote {out} ({meta.training['stage']} stage): validation accuracy {last['accuracy']:.4f}, "
        f"relative FLOPs {last['relative_flops']:.3f}, tokens kept per layer {last['tokens_kept_per_layer']}"
    )


def eval_accuracy_command(source: str, task: str, split: str | None, limit: int | None, as_json: bool) -> None:
    """`prunex eval accuracy SOURCE --task T`: accuracy with pruning, dense accuracy, FLOPs, kept tokens."""
    from prunex.data.labelled import load_labelled
    from prunex.eval.accuracy import evaluate_accuracy

    load_labelled(task)  # an unknown task is refused before the model loads
    report = evaluate_accuracy(source, task, split, limit=limit, show_progress=not as_json)
    result = {"source": source, **report.to_dict()}
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(
        f"accuracy {report.accuracy:.4f} (dense {report.dense_accuracy:.4f}, {report.dense_source}) on "
        f"{report.examples} {task} examples (split: {report.split})\n"
        f"relative FLOPs {report.relative_flops:.3f}: {report.gflops:.3f} GFLOPs per example "
        f"(dense {report.dense_gflops:.3f}), {report.mean_tokens:.1f} tokens in\n"
        f"tokens kept per layer {report.tokens_kept_per_layer}"
    )
