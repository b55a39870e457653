"""Options several commands share, declared once with one meaning, and what they turn into: `--policy` with
`--kv-budget` / `--kv-tokens` (a training-free keep policy and its budget; each command's description says what
the budget's fraction is of) and `--json`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prunex.errors import PrunexError

Policy = Annotated[Optional[str], typer.Option(
    "--policy", help="A training-free keep policy: window, sinks (any model or export), h2o, tova (PyTorch, or "
    "an export made with --attention-scores); with --kv-budget or --kv-tokens.")]
KvBudget = Annotated[Optional[float], typer.Option(
    "--kv-budget", help="The policy's budget as a kept fraction (of what: the command's description says).")]
KvTokens = Annotated[Optional[int], typer.Option(
    "--kv-tokens", help="The policy's budget as cached tokens per row and layer.")]
Text = Annotated[str, typer.Option(
    "--text", help="Packaged text (wikipedia, bbc, speeches, debates; split by document) or a UTF-8 text file.")]
TextFile = Annotated[Optional[Path], typer.Option("--text-file", help="A UTF-8 text file (the same as --text FILE).")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (logs stay on stderr).")]


def corpus(text: str, text_file: Path | None) -> str:
    """The text source of --text / --text-file: a packaged name, or the path of a file that exists."""
    if text_file is None:
        return text
    if not text_file.is_file():
        raise PrunexError(f"--text-file {text_file} does not exist")
    return str(text_file)


def budgeted_policy(learned, name: Optional[str], kv_budget: Optional[float], kv_tokens: Optional[int],
                    context: int):
    """The training-free policy `name`, or the `learned` one capped (a scorer: held), at the budget given."""
    from prunex.prune.budget import BudgetedPolicy, budget_tokens
    from prunex.prune.policy_spec import PolicySpec
    from prunex.prune.scorer import ScorerPolicy

    if name is not None:
        return PolicySpec.from_options(name, kv_budget, kv_tokens, context).build()
    tokens = budget_tokens(kv_budget, kv_tokens, context)
    if learned is None:
        raise PrunexError("this model has no learned policy to cap: add --policy window|sinks|h2o|tova")
    if isinstance(learned, ScorerPolicy):
        return learned.with_budget(tokens)
    return BudgetedPolicy(learned, tokens)
