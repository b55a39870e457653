"""Views of a `DropMap`: the text with one layer's dropped tokens dimmed (rich), a self-contained HTML report
and a PNG heatmap (matplotlib) of how long each token survived in each layer."""

from __future__ import annotations

import html
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from prunex.eval.explain import TOKEN_CLASSES, DropMap


def render_terminal(drops: DropMap, layer: int, console: Console) -> None:
    """Print the text with the tokens `layer` dropped dimmed, then the drop rates per layer and class."""
    text = Text()
    for token, at in zip(drops.tokens, drops.dropped_at[layer].tolist()):
        text.append(token, style="dim strike" if at >= 0 else "bold")
    console.print(f"[b]layer {layer}[/b]: dropped tokens are dimmed and struck through")
    console.print(text)
    console.print(_rates_table(drops))


def _rates_table(drops: DropMap) -> Table:
    counts = drops.class_counts()
    table = Table(title="drop rate by token class (share of the class's tokens dropped before the end)")
    table.add_column("layer", justify="right")
    for name in TOKEN_CLASSES:
        table.add_column(f"{name} ({counts[name]})", justify="right")
    rates = drops.drop_rates()
    for layer in range(drops.num_layers):
        table.add_row(str(layer), *[_percent(rates[name][layer]) for name in TOKEN_CLASSES])
    return table


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.0f}%"


def write_html(drops: DropMap, path: Path) -> None:
    """One self-contained HTML file: a layer x token heatmap of survival and the drop-rate table."""
    longest = max(int(drops.survived.max()), 1)
    rows = []
    for layer in range(drops.num_layers):
        cells = []
        for token, kept_for, at in zip(drops.tokens, drops.survived[layer].tolist(),
                                       drops.dropped_at[layer].tolist()):
            shade = 255 - int(200 * min(kept_for, longest) / longest)
            tip = f"{token!r}: " + (f"dropped at step {at}, seen by {kept_for} later queries" if at >= 0
                                    else "never dropped")
            cells.append(f'<td style="background:rgb({shade},{shade},255)" title="{html.escape(tip)}"></td>')
        rows.append(f"<tr><th>layer {layer}</th>{''.join(cells)}</tr>")
    header = "".join(f"<th class=tok>{html.escape(t)}</th>" for t in drops.tokens)
    rates = drops.drop_rates()
    counts = drops.class_counts()
    rate_head = "".join(f"<th>{name} ({counts[name]})</th>" for name in TOKEN_CLASSES)
    rate_rows = "".join(
        f"<tr><th>layer {layer}</th>" + "".join(f"<td>{_percent(rates[n][layer])}</td>" for n in TOKEN_CLASSES)
        + "</tr>" for layer in range(drops.num_layers))
    path.write_text(f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>prunex explain</title>
<style>body{{font-family:sans-serif}} td{{width:14px;height:14px;padding:0}}
th.tok{{writing-mode:vertical-rl;font-weight:normal;font-family:monospace;white-space:pre}}
table.rates td{{width:auto;padding:2px 8px;text-align:right}}</style></head><body>
<h1>prunex explain</h1>
<p>Each cell: how long a token survived in a layer's cache (dark: seen by many later queries, white: dropped at
once). Hover for the step at which it was dropped.</p>
<div style="overflow-x:auto"><table class=map><tr><th></th>{header}</tr>{''.join(rows)}</table></div>
<h2>Drop rate by token class</h2>
<table class=rates><tr><th></th>{rate_head}</tr>{rate_rows}</table>
</body></html>
""", encoding="utf-8")


def write_png(drops: DropMap, path: Path) -> None:
    """A layer x token heatmap of how many later queries saw each token, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(drops.tokens)
    figure, axes = plt.subplots(figsize=(min(4 + T * 0.12, 40), 2 + drops.num_layers * 0.25))
    image = axes.imshow(drops.survived.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    axes.set_ylabel("layer")
    axes.set_xlabel("token")
    if T <= 120:
        axes.set_xticks(range(T), [t.strip() or "\u2423" for t in drops.tokens], rotation=90, fontsize=7)
    figure.colorbar(image, ax=axes, label="later queries that still saw the token")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
