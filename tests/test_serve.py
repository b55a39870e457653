"""`prunex serve` end to end: the real server (uvicorn, loopback) on a tiny exported model, the official
`openai` client, sync and async."""

from __future__ import annotations

import asyncio
import math
import re
import time

import httpx
import numpy as np
import openai
import pytest
from serve_helpers import export_tiny, running_server, tiny_loader, wait_healthy

from prunex.eval.exported import exported_perplexity
from prunex.runtime.runtime import Runtime
from prunex.runtime.sampling import SamplingParams
from prunex.runtime.scoring import score_prompt

PROMPTS = ["Once upon a time, in a land far away,", "The cat sat", "Pruning the cache: ", "Hello there",
           "A much longer prompt that keeps going for a while so that entries get dropped along the way, yes"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def server(model_dir):
    with running_server(tiny_loader(model_dir), max_batch=8, max_queue=32) as (base, app):
        wait_healthy(base)
        yield base, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def alone(model_dir):
    """Greedy text of each prompt run alone through the library (the reference for the server)."""
    runtime = Runtime(model_dir, device="cpu", threads=1)
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    return {p: runtime.generate([p], params)[0] for p in PROMPTS}


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1))


def test_completion_matches_the_library(client, alone):
    done = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=12, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert done.choices[0].text == alone[PROMPTS[0]].text
    assert done.choices[0].finish_reason == "length"
    assert done.usage.completion_tokens == 12 and done.usage.prompt_tokens == alone[PROMPTS[0]].prompt_tokens
    stats = done.usage.model_extra["prunex"]
    assert 0 < stats["kv_kept_fraction"] < 1 and stats["kv_bytes"] < stats["dense_kv_bytes"]


def test_streamed_completion_with_usage(client, alone):
    chunks = list(client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == alone[PROMPTS[1]].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_several_prompts_give_one_choice_each(client, alone, model_dir):
    ids = Runtime(model_dir, device="cpu", threads=1).encode(PROMPTS[3])
    done = client.completions.create(model="tiny", prompt=[PROMPTS[2], PROMPTS[3]], max_tokens=12, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert [c.text for c in done.choices] == [alone[PROMPTS[2]].text, alone[PROMPTS[3]].text]
    by_ids = client.completions.create(model="tiny", prompt=[ids], max_tokens=12, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert by_ids.choices[0].text == alone[PROMPTS[3]].text


def test_chat_streamed_and_not(client, model_dir):
    runtime = Runtime(model_dir, device="cpu", threads=1)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    reference = runtime.generate([messages], SamplingParams(max_new_tokens=10, ignore_eos=True))[0].text
    done = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert done.choices[0].message.content == reference and done.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reference
    assert chunks[-1].choices[0].finish_reason == "length"


def test_sixteen_concurrent_streams_each_get_their_own_text(server, alone):
    base, _ = server
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(16)]

    async def one(prompt: str) -> str:
        stream = await client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True})
        return "".join([c.choices[0].text async for c in stream if c.choices])

    async def all_of_them():
        try:
            return await asyncio.gather(*(one(p) for p in prompts))
        finally:
            await client.close()

    texts = asyncio.run(all_of_them())
    assert texts == [alone[p].text for p in prompts]
    assert metric(base, "prunex:num_requests_running") == 0


def test_a_client_that_goes_away_leaves_no_row_behind(server):
    base, app = server
    generated_before = metric(base, "prunex:generation_tokens_total")
    with httpx.stream("POST", f"{base}/v1/completions", json={
            "model": "tiny", "prompt": PROMPTS[4], "max_tokens": 1900, "temperature": 0, "stream": True,
            "ignore_eos": True}, timeout=30) as response:
        lines = response.iter_lines()  # kept open: leaving the loop of a for would close the connection
        while not next(lines).startswith("data:"):
            pass
        assert metric(base, "prunex:num_requests_running") == 1
        assert metric(base, "prunex:kv_cache_bytes") > 0
    scheduler = app.state.prunex.scheduler
    for _ in range(500):  # bounded: the row leaves at the next step boundary after the disconnect is seen
        if scheduler.generator.is_done() and scheduler.accepted == 0:
            break
        time.sleep(0.01)
    assert scheduler.generator.is_done() and scheduler.runtime.engine.rows == 0
    assert not scheduler.generator._done  # nothing kept
    assert metric(base, "prunex:num_requests_running") == 0 and metric(base, "prunex:kv_cache_bytes") == 0
    assert metric(base, "prunex:generation_tokens_total") - generated_before < 1900  # it was stopped early


def test_a_non_streaming_client_that_goes_away_is_cancelled_too(server):
    base, app = server
    generated_before = metric(base, "prunex:generation_tokens_total")
    with pytest.raises(httpx.ReadTimeout):  # the client gives up (and closes) after 0.3 s
        httpx.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": PROMPTS[4], "max_tokens": 1900,
                                                   "temperature": 0, "ignore_eos": True}, timeout=0.3)
    scheduler = app.state.prunex.scheduler
    for _ in range(300):  # bounded: the handler polls for a disconnect every 0.5 s
        if scheduler.generator.is_done() and scheduler.accepted == 0:
            break
        time.sleep(0.01)
    assert scheduler.generator.is_done() and scheduler.runtime.engine.rows == 0
    assert metric(base, "prunex:generation_tokens_total") - generated_before < 1900


def test_echo_logprobs_equal_eval_ppl_computation(client, model_dir):
    runtime = Runtime(model_dir, device="cpu", threads=1)
    ids = runtime.encode(PROMPTS[4])
    # what lm-evaluation-harness's local-completions sends to score a continuation
    done = client.completions.create(model="tiny", prompt=[ids], max_tokens=1, temperature=0, logprobs=1,
                                     echo=True, seed=1234)
    logprobs = done.choices[0].logprobs
    assert len(logprobs.token_logprobs) == len(ids) + 1 and logprobs.token_logprobs[0] is None
    assert logprobs.top_logprobs[0] is None and len(logprobs.top_logprobs[1]) == 1
    assert logprobs.text_offset[0] == 0 and len(logprobs.tokens) == len(ids) + 1
    reference = score_prompt(runtime.engine, ids).logprobs.token_logprobs
    assert np.allclose(logprobs.token_logprobs[1:len(ids)], reference, atol=1e-4)
    # prunex eval ppl DIR on the same tokens: its perplexity is exp of their mean negative log-likelihood
    import torch

    ppl = exported_perplexity(model_dir, torch.tensor([ids]), threads=1, show_progress=False).perplexity
    assert math.isclose(-sum(logprobs.token_logprobs[1:len(ids)]) / (len(ids) - 1), math.log(ppl), abs_tol=1e-4)
    # greedy: the generated token is the top alternative
    assert max(logprobs.top_logprobs[-1].values()) == pytest.approx(logprobs.token_logprobs[-1], abs=1e-5)
    assert done.choices[0].text.startswith(PROMPTS[4])
    streamed = list(client.completions.create(model="tiny", prompt=[ids], max_tokens=3, temperature=0,
                                              logprobs=1, echo=True, stream=True))
    pieces = [c.choices[0] for c in streamed if c.choices and c.choices[0].logprobs]
    assert pieces[0].text == PROMPTS[4] and pieces[0].logprobs.token_logprobs[0] is None
    assert np.allclose(pieces[0].logprobs.token_logprobs[1:], reference, atol=1e-4)
    assert [len(p.logprobs.tokens) for p in pieces[1:]] == [1, 1, 1]  # then one generated token a chunk
    scored = client.completions.create(model="tiny", prompt=[ids], max_tokens=0, echo=True, logprobs=0)
    assert scored.choices[0].text == PROMPTS[4] and scored.usage.completion_tokens == 0
    assert np.allclose(scored.choices[0].logprobs.token_logprobs[1:], reference, atol=1e-4)


def test_async_client_and_models(server):
    base, _ = server

    async def run():
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as client:
            models = await client.models.list()
            done = await client.completions.create(model="tiny", prompt="Hi", max_tokens=3, temperature=0)
            return models, done

    models, done = asyncio.run(run())
    assert [m.id for m in models.data] == ["tiny"]
    assert done.usage.completion_tokens <= 3


def test_tokenizer_routes(server, model_dir):
    base, _ = server
    runtime = Runtime(model_dir, device="cpu", threads=1)
    tokens = httpx.post(f"{base}/tokenize", json={"prompt": "Hello", "add_special_tokens": False}).json()["tokens"]
    assert tokens == runtime.tokenizer("Hello", add_special_tokens=False)["input_ids"]
    assert httpx.post(f"{base}/detokenize", json={"tokens": tokens}).json() == {"prompt": "Hello"}
    info = httpx.get(f"{base}/tokenizer_info").json()
    assert info["eos_token"] == runtime.tokenizer.eos_token and "<assistant>" in info["chat_template"]


def test_openapi_document_marks_extensions_and_keeps_openai_order(server):
    document = httpx.get(f"{server[0]}/openapi.json").json()
    schemas = document["components"]["schemas"]
    request = list(schemas["CompletionRequest"]["properties"])
    assert request[:4] == ["model", "prompt", "best_of", "echo"]
    assert schemas["CompletionRequest"]["properties"]["top_k"]["x-prunex-extension"] is True
    assert schemas["Usage"]["properties"]["prunex"]["x-prunex-extension"] is True
    assert document["paths"]["/v1/classify"]["post"]["x-prunex-extension"] is True
    assert all("422" not in op["responses"] for path in document["paths"].values() for op in path.values())


def test_the_cli_serves_an_exported_dir(model_dir):
    import subprocess
    import sys

    from serve_helpers import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", "from prunex.cli.main import main; main()", "serve", model_dir,
                               "--port", str(port), "--device", "cpu", "--threads", "1", "--api-key", "k"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):  # bounded: start-up and model load
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read()
            time.sleep(0.05)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0)
        assert [m.id for m in client.models.list().data] == [model_dir.rsplit("/", 1)[-1]]
    finally:
        server.terminate()
        server.wait(timeout=30)
