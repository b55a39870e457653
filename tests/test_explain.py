"""`prunex explain`: drop steps per layer, token classes, and the HTML / PNG / terminal views."""

from __future__ import annotations

import json

import torch
from conftest import dropping_policy
from typer.testing import CliRunner

from prunex.cli.main import app
from prunex.eval.explain import explain_drops, token_class
from prunex.prune.lm import PrunedLM
from prunex.prune.window import WindowPolicy


def test_window_drops_each_token_exactly_when_it_leaves_the_window(tiny_llama):
    """WindowPolicy(6, sinks 2): token j >= 2 leaves at query j + 4; sinks and the last 4 tokens never."""
    T = 20
    drops = explain_drops(PrunedLM(tiny_llama, WindowPolicy(window=6, sink_tokens=2)), list(range(3, 3 + T)))
    expected = [-1, -1] + [j + 4 if j + 4 < T else -1 for j in range(2, T)]
    for layer in range(drops.num_layers):
        assert drops.dropped_at[layer].tolist() == expected
        assert drops.survived[layer].tolist() == [T - 1, T - 2] + [min(3, T - 1 - j) for j in range(2, T)]


def test_dcp_drops_differ_per_layer(tiny_llama):
    drops = explain_drops(PrunedLM(tiny_llama, dropping_policy(tiny_llama)), list(range(5, 45)))
    assert bool((drops.dropped_at >= 0).any())
    assert not torch.equal(drops.dropped_at[0], drops.dropped_at[1])
    rates = drops.drop_rates()
    assert set(rates) == {"punctuation", "stop word", "number", "other"}
    assert all(len(v) == drops.num_layers for v in rates.values())


def test_token_classes():
    stop = frozenset({"the", "of"})
    assert [token_class(t, stop) for t in [",", " .", "\n", " the", " 1984", "2,5", " Paris", "Of"]] == [
        "punctuation", "punctuation", "punctuation", "stop word", "number", "number", "other", "stop word"]


def test_cli_explain_writes_html_png_and_json(tmp_path, tiny_llama):
    html, png = tmp_path / "report.html", tmp_path / "map.png"
    runner = CliRunner()
    args = ["explain", "tiny-llama", "--text", "The cat sat on the mat, and 42 dogs barked. " * 4,
            "--policy", "sinks", "--kv-tokens", "8"]
    result = runner.invoke(app, [*args, "--out", str(html), "--png", str(png), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    layers = tiny_llama.model.config.num_hidden_layers
    assert all(len(rates) == layers for rates in out["drop_rates"].values())
    page = html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>") and "<script" not in page
    assert all(f"layer {n}</th>" in page for n in range(layers))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    terminal = runner.invoke(app, [*args, "--layer", "1"])
    assert terminal.exit_code == 0 and "layer 1" in terminal.stdout and "stop word" in terminal.stdout
    bad = runner.invoke(app, [*args, "--layer", "99"])
    assert bad.exit_code != 0 and "--layer 99" in str(bad.exception)
