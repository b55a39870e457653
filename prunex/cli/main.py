"""The `prunex` command line: thin commands that parse, build a config and call the API, one module a stage."""

from __future__ import annotations

import sys

import typer

from prunex.cli import bench, evaluate, export, generate, quantize, serve, train
from prunex.errors import PrunexError

app = typer.Typer(
    help="prunex: train, export, quantize and run transformers with learned token pruning.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
app.add_typer(train.app, name="train")
app.add_typer(evaluate.app, name="eval")
app.command()(evaluate.explain)
app.command()(generate.generate)
app.command()(export.export)
app.command()(quantize.quantize)
app.command()(serve.serve)
app.add_typer(bench.app, name="bench")


def main() -> None:
    """Console entry point: user errors become one clear line and exit code 2, never a traceback."""
    from prunex.console import configure_cli_logging

    configure_cli_logging()
    try:
        app()
    except PrunexError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
