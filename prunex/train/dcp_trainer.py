"""Training DCP interaction heads (optionally the whole model) with LM loss + sparsity loss.

A run saves its state in the output dir every few minutes; `resume=True` goes on from there
(`prunex.train.resume`). Launched on N processes (`torchrun`, `accelerate launch`) it trains data-parallel
(`prunex.train.parallel`): the same checkpoint as one process for the same global batch."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_model

from prunex.checkpoints.meta import CheckpointMeta, save_checkpoint
from prunex.config import DCPConfig, DCPTrainConfig, to_dict
from prunex.data.text import split_text, token_windows
from prunex.devices import torch_device
from prunex.errors import PrunexError
from prunex.loading import BASE_WEIGHTS_FILE
from prunex.models.sources import load_model
from prunex.prune.dcp import DCPPolicy
from prunex.prune.forward import run_full
from prunex.prune.lm import PrunedLM
from prunex.train.loop import batch_at, run_steps, shuffled_order
from prunex.train.parallel import DataParallel
from prunex.train.resume import TrainState


def alpha_at(step: int, config: DCPTrainConfig) -> float:
    """Cosine schedule of the alpha-sigmoid's alpha from alpha_start (step 0) to alpha_end (last step)."""
    fraction = step / max(config.steps - 1, 1)
    return config.alpha_end + (config.alpha_start - config.alpha_end) * (1 + math.cos(math.pi * fraction)) / 2


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of (B, T, V) logits on (B, T) ids."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1))


def distill_loss(logits: torch.Tensor, dense_logits: torch.Tensor) -> torch.Tensor:
    """Mean per-token KL(dense || pruned) of (B, T, V) logits: what pruning changed, without the text's noise."""
    vocab = logits.shape[-1]
    return F.kl_div(
        F.log_softmax(logits.reshape(-1, vocab), -1), F.log_softmax(dense_logits.reshape(-1, vocab), -1),
        log_target=True, reduction="batchmean",
    )


@torch.no_grad()
def hard_figures(lm: PrunedLM, windows: torch.Tensor) -> dict[str, float]:
    """Perplexity and sparsity with hard decisions (inference mode) on a few windows."""
    losses, kept, total = [], 0.0, 0.0
    for window in windows.to(lm.device):
        result = lm.forward(window[None])
        losses.append(float(lm_loss(result.logits, window[None])))
        kept += float(result.kept_entries)
        total += float(result.causal_entries)
    return {"perplexity": math.exp(sum(losses) / len(losses)), "sparsity": 1 - kept / total}


def _check(config: DCPTrainConfig) -> None:
    if config.train not in ("heads", "all"):
        raise PrunexError(f"--train must be 'heads' or 'all', not {config.train!r}")
    if config.loss not in ("lm", "distill"):
        raise PrunexError(f"--loss must be 'lm' or 'distill', not {config.loss!r}")


def _pruned_model(config: DCPTrainConfig, dcp: DCPConfig, device: torch.device) -> PrunedLM:
    """The base model with fresh DCP heads, on `device`, its context checked against `config.context`."""
    base = load_model(config.model)
    if base.tokenizer is None:
        raise PrunexError(f"{config.model} has no tokenizer; prunex trains on text")
    model_config = base.model.config
    hidden = getattr(model_config, "hidden_size", None) or model_config.n_embd
    lm = PrunedLM(base, DCPPolicy(model_config.num_hidden_layers, hidden, dcp)).to(device)
    lm.check_length(config.context)
    return lm


def _optimizer(lm: PrunedLM, config: DCPTrainConfig) -> torch.optim.Optimizer:
    """AdamW over the heads (and the base model with --train all, at its own learning rate)."""
    lm.base.model.requires_grad_(config.train == "all")
    groups = [{"params": list(lm.policy.parameters()), "lr": config.lr}]
    if config.train == "all":
        lm.base.model.train()
        groups.append({"params": list(lm.base.model.parameters()), "lr": config.base_lr})
    return torch.optim.AdamW(groups, weight_decay=0.0)


class _Objective(torch.nn.Module):
    """What data parallelism wraps: the trained modules, and a forward that computes one step's loss."""

    def __init__(self, lm: PrunedLM, config: DCPTrainConfig) -> None:
        super().__init__()
        self.policy, self.base = lm.policy, lm.base.model  # registered: their gradients are averaged
        self.lm, self.config = lm, config

    def forward(self, batch: torch.Tensor, alpha: float) -> tuple[torch.Tensor, dict[str, float]]:
        """(B, context) ids -> quality loss + sparsity weight x mean keep probability, and its parts."""
        lm, config = self.lm, self.config
        result = lm.forward(batch, alpha=alpha)
        loss_lm = lm_loss(result.logits, batch)
        if config.loss == "distill":
            with torch.no_grad():
                dense_logits = run_full(lm.adapter, None, batch).logits
            quality = distill_loss(result.logits, dense_logits)
        else:
            quality = loss_lm
        loss = quality + config.sparsity_weight * result.mean_keep
        return loss, {"loss": loss.item(), "lm_loss": loss_lm.item(), "kept": float(result.kept_fraction)}


def _train_step(objective: torch.nn.Module, parallel: DataParallel, batch: torch.Tensor, alpha: float,
                optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """One optimizer step on this process's share of a batch; the figures are the whole batch's."""
    loss, parts = objective(batch, alpha)
    optimizer.zero_grad(set_to_none=True)
    parallel.backward(loss)
    optimizer.step()
    parts = parallel.mean(parts)
    return {"alpha": alpha, "loss": parts["loss"], "perplexity": math.exp(parts["lm_loss"]),
            "sparsity": 1 - parts["kept"]}


def train_dcp(config: DCPTrainConfig, dcp: DCPConfig, out_dir: str | Path, show_progress: bool = True,
              resume: bool = False) -> CheckpointMeta:
    """Train DCP on `config.model` and write a checkpoint to `out_dir`; returns its metadata.

    `resume`: go on from the state an interrupted run with the same settings saved in `out_dir` (none there:
    start from the beginning)."""
    _check(config)
    parallel = DataParallel(torch_device(config.device))  # the device checked before the (slow) model load
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    lm = _pruned_model(config, dcp, parallel.device)
    tokenizer = lm.tokenizer
    windows = token_windows(tokenizer, split_text(config.text, "train", config.seed), config.context)
    validation = token_windows(tokenizer, split_text(config.text, "validation", config.seed), config.context, 2)
    optimizer = _optimizer(lm, config)
    objective = parallel.wrap(_Objective(lm, config))
    parallel.share(range(config.batch_size))  # refuses a batch that does not split evenly, before any step
    order = shuffled_order(len(windows), config.seed)
    saver = TrainState(out_dir, {**to_dict(config), "dcp": to_dict(dcp)}, every_s=config.save_every)
    state = saver.load() if resume else None
    state = state or {"step": 0, "history": [], "seconds": 0.0}
    if "policy" in state:
        lm.policy.load_state_dict(state["policy"])
        if config.train == "all":
            lm.base.model.load_state_dict(state["base"])
        optimizer.load_state_dict(state["optimizer"])
        saver.restore_rng(state)

    def save_now_and_then(done: int, history: list[dict[str, float]]) -> None:
        if parallel.is_main and saver.due() and done < config.steps:
            saved = {"step": done, "history": history, "seconds": state["seconds"] + time.time() - started,
                     "policy": lm.policy.state_dict(), "optimizer": optimizer.state_dict()}
            if config.train == "all":
                saved["base"] = lm.base.model.state_dict()
            saver.save(saved, f"step {done}")

    def step(index: int) -> dict[str, float]:
        share = parallel.share(batch_at(order, index, config.batch_size))
        batch = windows[share].to(lm.device)  # (B / processes, context)
        return {"step": index + 1, **_train_step(objective, parallel, batch, alpha_at(index, config), optimizer)}

    started = time.time()
    history, seconds = run_steps(config.steps, step, show_progress and parallel.is_main, start=state["step"],
                                 history=state["history"], after_step=save_now_and_then)
    seconds += state["seconds"]
    lm.base.model.eval()
    lm.policy.eval()
    figures = {"train_seconds": round(seconds, 1), "device": str(lm.device), "processes": parallel.processes,
               "validation": hard_figures(lm, validation)}
    meta = CheckpointMeta(
        method="dcp", base_model=lm.base.model_id, base_model_hash=lm.base.weights_hash, config=to_dict(dcp),
        training={"config": to_dict(config), "figures": figures, "last_steps": history[-5:]},
    )
    if parallel.is_main:
        out = save_checkpoint(out_dir, meta, lm.policy.state_dict())
        if config.train == "all":
            save_model(lm.base.model.cpu(), str(out / BASE_WEIGHTS_FILE))  # tied weights stored once
        saver.finish()
    parallel.wait()
    return meta
