"""Data parallelism for the trainers, on `accelerate`: the same loop on one process or on N.

    torchrun --nproc_per_node 2 -m prunex train dcp ...    # or: accelerate launch --num_processes 2 -m prunex ...

`DataParallel` wraps an `accelerate.Accelerator`: launched by `accelerate launch` or `torchrun` it finds its
rank and world size in the environment (gloo on CPU, NCCL on GPUs, one GPU a process), else it is one process
and changes nothing. Every global batch (`--batch-size`, the same number of examples whatever the number of
processes) is split into equal shares, one per process; the module that computes the loss is wrapped in
DistributedDataParallel, so `backward` averages the gradients and every process takes the same optimizer
step; the figures of a step are averaged over processes (`mean`). One process, the main one, shows progress and
writes the checkpoint and the resume state; every process reads a resume state, so `--resume` works whatever
the number of processes the run is resumed with.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from prunex.errors import PrunexError


def launched_as_main() -> bool:
    """True unless this is a non-main process of a launch (`RANK` > 0): only the main one prepares `--out`."""
    return int(os.environ.get("RANK", "0")) == 0


class DataParallel:
    """This process's part of a data-parallel run (one process: all of it)."""

    def __init__(self, device: torch.device) -> None:
        from accelerate import Accelerator, DistributedDataParallelKwargs

        # a model may have parameters a stage leaves unused (a pooler, frozen thresholds): DDP must not wait on them
        unused = DistributedDataParallelKwargs(find_unused_parameters=True)
        self.accelerator = Accelerator(cpu=device.type == "cpu", kwargs_handlers=[unused])
        self.device = self.accelerator.device if device.type != "cpu" else device
        self.processes = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process

    def share(self, picks: Sequence[int]) -> list[int]:
        """This process's examples of a global batch (equal shares, in order)."""
        if len(picks) % self.processes:
            raise PrunexError(f"--batch-size {len(picks)} must be a multiple of the {self.processes} processes: "
                              "each takes an equal share of every batch")
        size = len(picks) // self.processes
        return list(picks[self.rank * size:(self.rank + 1) * size])

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` (its forward computes the loss) wrapped so that backward averages gradients over processes."""
        return self.accelerator.prepare_model(module) if self.processes > 1 else module

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def mean(self, figures: dict[str, float]) -> dict[str, float]:
        """The figures averaged over processes (the global batch's, when each share is the same size)."""
        return self._reduce(figures, "mean")

    def sum(self, figures: dict[str, float]) -> dict[str, float]:
        """The figures summed over processes."""
        return self._reduce(figures, "sum")

    def token_share(self, tokens: float) -> float:
        """The factor that turns a mean over this process's `tokens` into its part of the mean over the whole
        batch's tokens (once gradients are averaged over processes); 1 on one process."""
        if self.processes == 1:
            return 1.0
        return tokens * self.processes / self.sum({"tokens": tokens})["tokens"]

    def _reduce(self, figures: dict[str, float], how: str) -> dict[str, float]:
        if self.processes == 1:
            return figures
        values = torch.tensor(list(figures.values()), dtype=torch.float64, device=self.device)
        return dict(zip(figures, self.accelerator.reduce(values, reduction=how).tolist()))

    def wait(self) -> None:
        """Every process reaches this point before any goes on (after the main one wrote a file)."""
        self.accelerator.wait_for_everyone()
