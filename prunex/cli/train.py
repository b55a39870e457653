"""`prunex train dcp | ltp`: DCP heads for a decoder or LTP thresholds for an encoder, each command with only its
own options; data-parallel under a launcher (`torchrun --nproc_per_node N -m prunex train dcp ...`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from prunex.cli.options import Text
from prunex.errors import PrunexError


class _Methods(TyperGroup):
    """`prunex train`'s group: an unknown method gets an error that lists the methods there are."""

    def resolve_command(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            ctx.fail(f"No such command {args[0]!r}. Methods: dcp and scorer (a decoder's K/V cache), ltp (an "
                     "encoder's tokens).")
        return super().resolve_command(ctx, args)


app = typer.Typer(cls=_Methods, no_args_is_help=True, help="Fine-tune a model so that it learns which tokens to "
                  "drop: `dcp` or `scorer` for a decoder's K/V cache, `ltp` for an encoder classifier's tokens. Writes "
                  "pruning.safetensors + pruning.json; data-parallel when launched by `torchrun` or `accelerate "
                  "launch`.")

# The options both methods share, declared once.
Out = Annotated[Path, typer.Option("--out", help="Folder for the pruning checkpoint.")]
Threads = Annotated[int, typer.Option(min=0, help="torch threads (0: torch's default).")]
Device = Annotated[str, typer.Option(help="auto (CUDA when PyTorch sees a GPU), cpu or cuda.")]
Seed = Annotated[int, typer.Option(help="Data order, initialisation and dropout.")]
Force = Annotated[bool, typer.Option(help="Replace a non-empty --out.")]
Resume = Annotated[bool, typer.Option(help="Go on from the state an interrupted run saved in --out (same options).")]
SaveEvery = Annotated[float, typer.Option(min=0.0, help="Seconds between saves of the resume state in --out.")]


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


@app.command("dcp")
def dcp(
    out: Out,
    model: str = typer.Option("smollm2", help="A decoder: packaged (smollm2, tiny-llama, ...) or a HF dir."),
    text: Text = "wikipedia",
    steps: int = typer.Option(200, min=1, help="Optimizer steps."),
    context: int = typer.Option(512, min=8, help="Tokens per training sequence."),
    batch_size: int = typer.Option(1, min=1, help="Sequences per step (the global batch on several processes)."),
    sparsity_weight: float = typer.Option(0.3, min=0.0, help="Weight of the sparsity loss (mean keep prob)."),
    train_what: str = typer.Option("heads", "--train", help="heads: new parameters only; all: whole model."),
    loss: str = typer.Option("lm", help="lm: next-token cross-entropy; distill: KL from the dense model."),
    lr: float = typer.Option(1e-3, help="Learning rate of the pruning heads."),
    sinks: int = typer.Option(4, min=0, help="First tokens never dropped (attention sinks); 0 = pure DCP."),
    recent: int = typer.Option(0, min=0, help="Tokens protected while among the last N (0 = pure DCP)."),
    init_bias: float = typer.Option(5.0, help="Initial keep-logit bias (large = keep all at first)."),
    interaction_dim: int = typer.Option(64, min=1, help="Width r of the interaction projections."),
    threads: Threads = 0,
    device: Device = "auto",
    seed: Seed = 0,
    force: Force = False,
    resume: Resume = False,
    save_every: SaveEvery = 300.0,
) -> None:
    """Dynamic Context Pruning for a decoder: per-layer heads that decide which past tokens leave the K/V cache."""
    from prunex.config import DCPConfig, DCPTrainConfig
    from prunex.train.dcp_trainer import train_dcp
    from prunex.train.parallel import launched_as_main

    _clear_out(out, force, resume)
    config = DCPTrainConfig(
        method="dcp", model=model, text=text, steps=steps, batch_size=batch_size, context=context, lr=lr,
        train=train_what, sparsity_weight=sparsity_weight, loss=loss, seed=seed, threads=threads, device=device,
        save_every=save_every,
    )
    meta = train_dcp(config, DCPConfig(interaction_dim=interaction_dim, init_bias=init_bias, sink_tokens=sinks,
                                       recent_tokens=recent), out, resume=resume)
    figures = meta.training["figures"]["validation"]
    if launched_as_main():
        typer.echo(
            f"wrote {out}: validation perplexity {figures['perplexity']:.2f}, sparsity {figures['sparsity']:.3f}"
        )


@app.command("scorer")
def scorer(
    out: Out,
    model: str = typer.Option("smollm2", help="A decoder: smollm2, a tiny test name or a HF dir."),
    texts: list[str] = typer.Option(["wikipedia", "speeches", "debates"], "--text", help="Sources to fit on (their "
                                    "train splits; repeat the option): packaged names or UTF-8 text files."),
    target_kv: float = typer.Option(0.125, min=0.0, max=1.0, help="The kept K/V fraction (at --context) the scorer "
                                    "is tuned for and holds by default; any other budget can be asked at run time."),
    context: int = typer.Option(2048, min=32, help="Tokens per window."),
    windows: int = typer.Option(48, min=1, help="Training windows, spread over the sources."),
    validation_windows: int = typer.Option(2, min=1, help="Validation windows per source (choose the recent share)."),
    target_window: int = typer.Option(16, min=1, help="A token's target is the most attention that a query at least "
                                      "this many tokens later pays it."),
    threads: Threads = 0,
    seed: Seed = 0,
    force: Force = False,
    resume: Resume = False,
    save_every: SaveEvery = 300.0,
) -> None:
    """A learned K/V scorer for a decoder: per layer and K/V head, a linear map from a token's hidden state to the
    attention later queries will pay it, fitted from forward passes only (no backward); held to the budget by the
    rule that does best on validation: each head keeps its best-scored tokens beside its most recent ones and the
    sinks (ranked), or evicts by the latest query's attention weighed with the learned score (attention)."""
    from prunex.config import ScorerConfig, ScorerTrainConfig
    from prunex.train.scorer_trainer import describe_rule, train_scorer

    _clear_out(out, force, resume)
    config = ScorerTrainConfig(model=model, texts=list(texts), context=context, windows=windows,
                               validation_windows=validation_windows, target_kv=target_kv,
                               target_window=target_window, seed=seed, threads=threads, save_every=save_every)
    meta = train_scorer(config, out, resume=resume)
    figures = meta.training["figures"]
    rule = describe_rule(ScorerConfig(**meta.config))
    chosen = figures["validation"]["ppl_ratio_by_rule"][rule]
    typer.echo(f"wrote {out}: fitted at {figures['tokens_per_s']:.0f} tokens/s; rule chosen on validation: {rule} "
               f"(perplexity {', '.join(f'x{r:.4f} at kept {b}' for b, r in chosen.items())} of dense)")


@app.command("ltp")
def ltp(
    out: Out,
    model: str = typer.Option("minilm", help="An encoder: minilm, tiny-bert, tiny-roberta, a HF dir; for --stage "
                              "soft / hard, the previous stage's checkpoint dir."),
    task: str = typer.Option("bbc", help="bbc, rotten-tomatoes, or a text/label CSV or JSONL."),
    stage: str = typer.Option("all", help="base, soft, hard (--model: previous stage dir), all."),
    target_flops: Optional[float] = typer.Option(
        None, min=0.0, max=1.0, help="Relative FLOPs wanted on validation, reached from under (default 0.5; off "
        "with --lambda)."),
    lam: Optional[float] = typer.Option(None, "--lambda", min=0.0, help="Experts: a fixed mask loss weight "
                                        "instead of --target-flops."),
    steps: Optional[int] = typer.Option(None, min=1, help="Optimizer steps per stage (default: by epochs, the base "
                                        "stage stopping early on validation)."),
    context: int = typer.Option(512, min=8, help="Tokens per input at most (the task's own length when smaller)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Examples per step (default 32 up to 128 tokens, "
                                             "else 8; the global batch on several processes)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate of the threshold offsets (1e-2)."),
    model_lr: Optional[float] = typer.Option(None, min=0.0, help="Encoder learning rate (1e-4)."),
    epochs: Optional[float] = typer.Option(None, min=0.0, help="Most epochs of the base stage (2)."),
    prune_epochs: Optional[float] = typer.Option(None, min=0.0, help="Epochs of the soft and of the hard stage "
                                                 "(0.25, at most 100k tokens each)."),
    distill: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Hard stage: weight of distilling the "
                                            "dense model (0.5; 0: off)."),
    min_tokens: Optional[int] = typer.Option(None, min=1, help="Tokens a row always keeps (4)."),
    threads: Threads = 0,
    device: Device = "auto",
    seed: Seed = 0,
    force: Force = False,
    resume: Resume = False,
    save_every: SaveEvery = 300.0,
) -> None:
    """Learned Token Pruning for an encoder classifier, in three stages (dense, soft thresholds, hard pruning).
    A `--lambda` without `--target-flops` trains with that fixed lambda and no threshold calibration."""
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
    _clear_out(out, force, resume)
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
