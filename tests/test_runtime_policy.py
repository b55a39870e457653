"""A run-time keep policy in the runtime on a dense export: the same decisions and tokens as PyTorch."""

from __future__ import annotations

import pytest
import torch

from prunex.errors import PrunexError
from prunex.export.decoder import export_decoder
from prunex.prune.forward import run_full
from prunex.prune.lm import PrunedLM
from prunex.prune.policy_spec import PolicySpec
from prunex.prune.pruned_cache import PrunedKVCache
from prunex.runtime.runtime import Runtime
from prunex.runtime.sampling import SamplingParams

BUDGET, STEPS = 7, 14


@pytest.fixture(scope="module")
def dense_export(tmp_path_factory, tiny_llama):
    out = tmp_path_factory.mktemp("dense") / "tiny-llama"
    export_decoder(PrunedLM(tiny_llama, None), out, dense=True, source="tiny-llama")
    return out


@pytest.fixture(scope="module")
def scored_export(tmp_path_factory, tiny_llama):
    """The dense export with each layer's attention probabilities as outputs (what H2O / TOVA need)."""
    out = tmp_path_factory.mktemp("scored") / "tiny-llama"
    export_decoder(PrunedLM(tiny_llama, None), out, dense=True, source="tiny-llama", attention_scores=True)
    return out


@pytest.mark.parametrize("name", ["window", "sinks", "h2o", "tova"])
def test_runtime_policy_matches_pytorch(name, dense_export, scored_export, tiny_llama):
    """Greedy, a batch of rows of different lengths (prompts within the budget: the prompt pass is the graph's):
    the same tokens, and every layer holds the same positions per row as the PyTorch cache after each run."""
    spec = PolicySpec(name, BUDGET, sink_tokens=2)
    policy = spec.build()
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (3, 6, 5)]
    directory = scored_export if name in ("h2o", "tova") else dense_export
    engine = Runtime(directory, device="cpu", threads=1, policy=spec).engine
    logits = engine.prefill(prompts)
    runtime_tokens = []
    for _ in range(STEPS):
        runtime_tokens.append(logits.argmax(-1))
        logits = engine.decode(runtime_tokens[-1])

    lm = PrunedLM(tiny_llama, policy)
    ids, valid = torch.zeros(3, 6, dtype=torch.long), torch.zeros(3, 6, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)], valid[row, :len(prompt)] = torch.tensor(prompt), True
    with torch.no_grad():
        prefill = run_full(lm.adapter, policy, ids, valid, collect_prefill=True)
        cache = PrunedKVCache.from_prefill(prefill.prefill, valid)
        step_logits = prefill.logits[torch.arange(3), valid.sum(-1) - 1]
        positions = valid.sum(-1)
        for step in range(STEPS):
            tokens = step_logits.argmax(-1)
            assert tokens.tolist() == runtime_tokens[step].tolist()
            step_logits = lm.decode_step(cache, tokens, positions)
            positions = positions + 1
    held_cache = engine.cache
    for layer in range(held_cache.num_layers):
        for row in range(3):
            valid = held_cache.layer_view("valid", layer)[row]
            held = sorted(held_cache.layer_view("positions", layer)[row][valid].tolist())
            expected = cache.layers[layer].positions[row][cache.layers[layer].valid[row]].tolist()
            assert held == expected
            assert len(held) == BUDGET  # the last token's entry joined after the budget was applied
            if name == "sinks":
                assert held[:2] == [0, 1]
    assert engine.cache.held_bytes() < engine.cache.dense_bytes() / 2


def test_runtime_refuses_attention_policies_without_attention_outputs(dense_export):
    with pytest.raises(PrunexError, match="--attention-scores"):
        Runtime(dense_export, device="cpu", threads=1, policy=PolicySpec("h2o", 8))


def test_cli_generate_with_policy_on_a_dense_export(dense_export):
    """`prunex generate DIR --policy sinks --kv-tokens 8` holds 8 entries per layer at the end; h2o is refused."""
    import json

    from typer.testing import CliRunner

    from prunex.cli.main import app

    runner = CliRunner()
    args = ["generate", str(dense_export), "--prompt", "Once upon", "--max-new-tokens", "20", "--device", "cpu",
            "--threads", "1", "--json"]
    plain = json.loads(runner.invoke(app, args).stdout)
    result = runner.invoke(app, [*args, "--policy", "sinks", "--kv-tokens", "8"])
    assert result.exit_code == 0, result.output
    bounded = json.loads(result.stdout)
    assert bounded["kv_bytes"] < plain["kv_bytes"] == plain["dense_kv_bytes"]
    assert bounded["kv_bytes"] * bounded["kv_kept_fraction"] ** -1 == pytest.approx(bounded["dense_kv_bytes"])
    refused = runner.invoke(app, [*args, "--policy", "h2o", "--kv-tokens", "8"])
    assert refused.exit_code != 0 and "--attention-scores" in str(refused.exception)


def test_serve_applies_a_run_time_policy(dense_export):
    """`prunex serve DIR --policy sinks --kv-tokens 8`: the server's text is the library's under the same policy;
    options the runtime cannot apply are refused before the server starts."""
    import openai
    from serve_helpers import running_server, tiny_loader, wait_healthy

    from prunex.cli.serve import serve_command

    policy = PolicySpec("sinks", 8)
    params = SamplingParams(max_new_tokens=20)
    runtime = Runtime(dense_export, device="cpu", threads=1, policy=policy)
    expected = runtime.generate([runtime.encode("Once upon")], params)[0].text
    with running_server(tiny_loader(str(dense_export), policy=policy)) as (base, _):
        wait_healthy(base)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
        served = client.completions.create(model="tiny", prompt="Once upon", max_tokens=20, temperature=0)
    assert served.choices[0].text == expected
    options = {"host": "127.0.0.1", "port": 0, "api_key": None, "max_batch": 2, "max_queue": 2, "device": "cpu",
               "threads": 1, "model_name": None}
    with pytest.raises(PrunexError, match="--kv-tokens"):
        serve_command(str(dense_export), **options, policy="sinks")
    with pytest.raises(PrunexError, match="--attention-scores"):
        serve_command(str(dense_export), **options, policy="h2o", kv_tokens=8)
