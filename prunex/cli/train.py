"""`prunex train`: DCP heads for a decoder or LTP thresholds for an encoder (data-parallel under a launcher)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer

from prunex.errors import PrunexError


def _clear_out(out: Path, force: bool, resume: bool = False) -> None:
    """Refuse a non-empty --out unless --force, which empties it (training writes into it as it goes), or
    --resume with the training state an interrupted run left there."""
    from prunex.export.folder import prepare_out
    from prunex.train.parallel import launched_as_main
    from prunex.train.resume import STATE_FILE

    if not launched_as_main():  # a data-parallel launch: the main process checks and prepares --out
        return
    if not resume:
        prepare_out(out, force, clear=True)
        return
    if force:
        raise PrunexError("--resume goes on with what --out holds and --force empties it: pass one of them")
    if out.is_dir() and any(out.iterdir()) and not (out / STATE_FILE).is_file():
        raise PrunexError(
            f"{out} holds no saved training state ({STATE_FILE}) to resume: its run finished or it was written by "
            "something else; choose another --out, or pass --force to start over"
        )

def train(
    out: Path = typer.Option(..., "--out", help="Folder for the pruning checkpoint."),
    method: str = typer.Option("dcp", help="dcp: decoder KV pruning; ltp: encoder token pruning."),
    model: str = typer.Option("smollm2", help="Packaged model (smollm2, tiny-llama, tiny-gpt2) or a HF dir."),
    text: str = typer.Option("wikipedia", help="Training text: wikipedia, bbc, or a UTF-8 text file."),
    steps: Optional[int] = typer.Option(
        None, min=1, help="Optimizer steps (dcp: 200; ltp: per stage, default by epochs with early stopping)."
    ),
    context: int = typer.Option(512, min=8, help="Tokens per training sequence."),
    batch_size: Optional[int] = typer.Option(
        None, min=1, help="Sequences per step (dcp: 1; ltp: 32 up to 128 tokens, else 8)."
    ),
    sparsity_weight: float = typer.Option(0.3, min=0.0, help="Weight of the sparsity loss (mean keep prob)."),
    train_what: str = typer.Option("heads", "--train", help="heads: new parameters only; all: whole model."),
    loss: str = typer.Option("lm", help="lm: next-token cross-entropy; distill: KL from the dense model."),
    lr: Optional[float] = typer.Option(
        None, help="Learning rate of the pruning parameters (dcp: 1e-3; ltp: the thresholds', 1e-2)."
    ),
    sinks: int = typer.Option(4, min=0, help="First tokens never dropped (attention sinks); 0 = pure DCP."),
    recent: int = typer.Option(0, min=0, help="Tokens protected while among the last N (0 = pure DCP)."),
    init_bias: float = typer.Option(5.0, help="Initial keep-logit bias (large = keep all at first)."),
    interaction_dim: int = typer.Option(64, min=1, help="Width r of the interaction projections."),
    threads: int = typer.Option(0, min=0, help="torch threads (0: torch's default)."),
    device: str = typer.Option("auto", help="auto (CUDA when PyTorch sees a GPU), cpu or cuda."),
    seed: int = typer.Option(0),
    force: bool = typer.Option(False, help="Replace a non-empty --out."),
    resume: bool = typer.Option(
        False, help="Go on from the state an interrupted run saved in --out (every 5 minutes; same options)."
    ),
    save_every: float = typer.Option(300.0, min=0.0, help="Seconds between saves of the resume state in --out."),
    task: str = typer.Option("bbc", help="ltp: bbc, rotten-tomatoes, or a text/label CSV or JSONL."),
    stage: str = typer.Option("all", help="ltp: base, soft, hard (--model: previous stage dir), all."),
    lam: Optional[float] = typer.Option(
        None, "--lambda", min=0.0, help="ltp, experts: a fixed mask loss weight instead of --target-flops."
    ),
    target_flops: Optional[float] = typer.Option(
        None, min=0.0, max=1.0,
        help="ltp: relative FLOPs wanted on validation, reached from under (default 0.5; off with --lambda).",
    ),
    model_lr: Optional[float] = typer.Option(None, min=0.0, help="ltp: encoder learning rate (1e-4)."),
    epochs: Optional[float] = typer.Option(None, min=0.0, help="ltp: most epochs of the base stage (2)."),
    prune_epochs: Optional[float] = typer.Option(
        None, min=0.0, help="ltp: epochs of the soft and of the hard stage (0.25, at most 100k tokens each)."
    ),
    distill: Optional[float] = typer.Option(
        None, min=0.0, max=1.0, help="ltp: hard stage weight of distilling the dense model (0.5; 0: off)."
    ),
    min_tokens: Optional[int] = typer.Option(None, min=1, help="ltp: tokens a row always keeps (4)."),
) -> None:
    """Fine-tune a model so that it learns which tokens to drop; writes pruning.safetensors + pruning.json.
    Data-parallel on N processes when launched by `torchrun --nproc_per_node N -m prunex train ...` or
    `accelerate launch`."""
    from prunex.config import DCPConfig, DCPTrainConfig
    from prunex.train.dcp_trainer import train_dcp
    from prunex.train.parallel import launched_as_main

    if method == "ltp":
        return train_ltp_command(
            out=out, model="minilm" if model == "smollm2" else model, task=task, stage=stage, lam=lam, steps=steps,
            context=context, batch_size=batch_size, lr=lr, threads=threads, seed=seed, force=force,
            target_flops=target_flops, model_lr=model_lr, epochs=epochs, prune_epochs=prune_epochs, distill=distill,
            min_tokens=min_tokens, device=device, prepare_out=_clear_out, resume=resume, save_every=save_every,
        )
    if method != "dcp":
        raise PrunexError(f"--method {method!r} is not available; use dcp or ltp")
    _clear_out(out, force, resume)
    config = DCPTrainConfig(
        method=method, model=model, text=text, steps=steps or 200, batch_size=batch_size or 1, context=context,
        lr=1e-3 if lr is None else lr,
        train=train_what, sparsity_weight=sparsity_weight, loss=loss, seed=seed, threads=threads, device=device,
        save_every=save_every,
    )
    dcp = DCPConfig(
        interaction_dim=interaction_dim, init_bias=init_bias, sink_tokens=sinks, recent_tokens=recent
    )
    meta = train_dcp(config, dcp, out, resume=resume)
    figures = meta.training["figures"]["validation"]
    if launched_as_main():
        typer.echo(
            f"wrote {out}: validation perplexity {figures['perplexity']:.2f}, sparsity {figures['sparsity']:.3f}"
        )


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
    rate, as `--lr` is the pruning parameters' for DCP; `prepare_out` checks/clears --out (`_clear_out` above);
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
