"""`prunex serve` under bad input and pressure: each bad request gets its 4xx with an OpenAI error body and the
server still answers; the queue limit answers 503 with Retry-After; the API key; /health 503 -> 200; an
engine error fails its request only; an encoder serves /v1/classify."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
from serve_helpers import export_tiny, running_server, tiny_loader, wait_healthy

from prunex.serve.model import load_served_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("serve-errors") / "tiny")


@pytest.fixture(scope="module")
def base(model_dir):
    with running_server(tiny_loader(model_dir), max_batch=2, max_queue=1, max_body_bytes=64 * 1024) as (url, _):
        wait_healthy(url)
        yield url


def _ok(base: str) -> None:
    done = httpx.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2})
    assert done.status_code == 200, done.text


COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
GOOD = {"model": "tiny", "prompt": "Hello", "max_tokens": 2}
BAD = [  # (route, body, status, words the message must hold)
    (COMPLETIONS, b"{not json", 400, "not valid JSON"),
    (COMPLETIONS, {**GOOD, "max_tokens": "many"}, 400, "max_tokens"),
    (COMPLETIONS, {**GOOD, "temperature": [1]}, 400, "temperature"),
    (COMPLETIONS, {**GOOD, "frobnicate": 1}, 400, "unrecognized request argument supplied: frobnicate"),
    (COMPLETIONS, {**GOOD, "model": "gpt-4"}, 404, "does not exist"),
    (COMPLETIONS, {**GOOD, "max_tokens": -1}, 400, "max_tokens"),
    (COMPLETIONS, {**GOOD, "max_tokens": 5000}, 400, "exceed the model's context of 2048 by 2957"),
    (COMPLETIONS, {**GOOD, "prompt": [1] * 2100}, 400, "2100 tokens, 53 more than fit"),
    (COMPLETIONS, {**GOOD, "prompt": ""}, 400, "prompt is empty"),
    (COMPLETIONS, {**GOOD, "prompt": [5, 999]}, 400, "token id 999 is outside the vocabulary"),
    (COMPLETIONS, {**GOOD, "n": 2}, 400, "only n=1"),
    (COMPLETIONS, {**GOOD, "max_tokens": 0}, 400, "needs echo"),
    (COMPLETIONS, {**GOOD, "stop": [""]}, 400, "stop strings must not be empty"),
    (COMPLETIONS, {**GOOD, "prompt": "x" * 70000}, 413, "over 65536 bytes"),
    (CHAT, {"model": "tiny", "messages": []}, 400, "messages"),
    (CHAT, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}, 400, "chat"),
    ("/v1/classify", {"input": ["text"]}, 400, "is a decoder"),
    ("/v1/nowhere", {}, 404, "Not Found"),
]


@pytest.mark.parametrize(("route", "body", "status", "words"), BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_input_is_a_clear_4xx_and_the_server_goes_on(base, route, body, status, words):
    if isinstance(body, bytes):
        answer = httpx.post(f"{base}{route}", content=body, headers={"content-type": "application/json"})
    else:
        answer = httpx.post(f"{base}{route}", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"]
    _ok(base)


def test_the_openai_client_sees_the_errors(base):
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="only n=1"):
        client.completions.create(model="tiny", prompt="Hi", n=2)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="Hi")


def test_a_full_queue_answers_503_with_retry_after_at_once(base):
    # max_batch 2 + max_queue 1: three long streams fill the server; the fourth is refused at once
    streams = [httpx.stream("POST", f"{base}/v1/completions", json={
        "model": "tiny", "prompt": "Hello", "max_tokens": 1800, "stream": True, "ignore_eos": True,
        "temperature": 0}, timeout=30) for _ in range(3)]
    opened = [s.__enter__() for s in streams]
    try:
        assert all(r.status_code == 200 for r in opened)
        refused = httpx.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2},
                             timeout=5)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "queue_full"
    finally:
        for s in streams:
            s.__exit__(None, None, None)
    for _ in range(300):  # bounded: the cancelled streams leave and the server answers again
        if httpx.post(f"{base}/v1/completions", json=GOOD).status_code == 200:
            break
    _ok(base)


def test_api_key_is_needed_everywhere_but_health(model_dir):
    with running_server(tiny_loader(model_dir), api_key="sesame") as (url, _):
        wait_healthy(url)
        for method, route in [("GET", "/v1/models"), ("POST", COMPLETIONS), ("GET", "/metrics"),
                              ("GET", "/openapi.json"), ("POST", "/tokenize")]:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                answer = httpx.request(method, f"{url}{route}", headers=headers, json=GOOD)
                assert answer.status_code == 401 and answer.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{url}/health").status_code == 200
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sesame", max_retries=0)
        assert client.completions.create(model="tiny", prompt="Hi", max_tokens=2).choices


def test_health_is_503_until_the_model_is_loaded(model_dir):
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return tiny_loader(model_dir)()

    with running_server(slow_load) as (url, _):
        loading = httpx.get(f"{url}/health")
        assert loading.status_code == 503 and loading.json()["error"] == {
            "code": 503, "message": "Loading model", "type": "unavailable_error"}
        assert httpx.post(f"{url}{COMPLETIONS}", json=GOOD).status_code == 503
        release.set()
        wait_healthy(url)
        _ok(url)


def test_an_engine_error_fails_its_request_not_the_server(model_dir):
    # a K/V byte limit below what a prompt needs: the engine refuses it at prefill
    load = lambda: load_served_model(model_dir, device="cpu", threads=1, name="tiny")  # noqa: E731

    def tight():
        model = load()
        model.runtime.engine.cache.limits.max_bytes = 1024
        return model

    with running_server(tight) as (url, _):
        wait_healthy(url)
        failed = httpx.post(f"{url}{COMPLETIONS}", json={**GOOD, "prompt": "Hello " * 40})
        assert failed.status_code == 500 and "over its limit" in failed.json()["error"]["message"]
        assert failed.json()["error"]["code"] == "engine_error"
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.post(f"{url}/tokenize", json={"prompt": "still here"}).status_code == 200


def test_an_encoder_serves_classify(tmp_path):
    from conftest import peaky_classifier

    from prunex.export.encoder import export_encoder
    from prunex.runtime.classifier import Classifier

    classifier, base_model = peaky_classifier()
    out = tmp_path / "ltp"
    export_encoder(classifier, out, base_model=base_model.model_id)
    texts = ["a long enough sentence for the pruner to drop a few of its many tokens", "short one"]
    expected = Classifier(out, device="cpu", threads=1).classify(texts)
    with running_server(lambda: load_served_model(str(out), device="cpu", threads=1, name="ltp")) as (url, _):
        wait_healthy(url)
        answer = httpx.post(f"{url}/v1/classify", json={"input": texts})
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        assert [d["label"] for d in data] == [p.label for p in expected]
        assert [d["tokens_kept"] for d in data] == [p.tokens_kept_per_layer for p in expected]
        assert data[0]["tokens_kept"][-1] < data[0]["tokens"]  # LTP really removed tokens
        assert httpx.post(f"{url}{COMPLETIONS}", json={**GOOD, "model": "ltp"}).status_code == 400
