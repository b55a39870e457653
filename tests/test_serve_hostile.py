"""`prunex serve` against a hostile but realistic client: no single request may freeze the server, stall every
stream, take a 500 or grow its memory with the prompt. Each test here failed before the fix it guards."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from serve_helpers import export_tiny, running_server, tiny_loader, wait_healthy

from prunex.serve.model import load_served_model

CHUNK = 16  # prompt tokens prefilled between two decode steps on these servers


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("serve-hostile") / "tiny")


@pytest.fixture(scope="module")
def base(model_dir):
    settings = dict(max_batch=2, max_queue=2, prefill_chunk=CHUNK, body_timeout=1.0)
    with running_server(tiny_loader(model_dir), **settings) as (url, _):
        wait_healthy(url)
        yield url


def _post(base: str, route: str, body: bytes, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{base}{route}", content=body, headers={"content-type": "application/json"},
                      timeout=timeout)


def _still_serving(base: str) -> None:
    done = httpx.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2}, timeout=30)
    assert done.status_code == 200, done.text


@pytest.mark.parametrize(("route", "body"), [
    ("/v1/completions", rb'{"model": "tiny", "prompt": "abc\ud800def", "max_tokens": 2}'),
    ("/v1/completions", rb'{"model": "tiny", "prompt": ["ok", "\udfff"], "max_tokens": 2}'),
    ("/tokenize", rb'{"prompt": "\ud800"}'),
    ("/v1/chat/completions", rb'{"model": "tiny", "messages": [{"role": "user", "content": "a\udc00"}]}'),
])
def test_a_lone_surrogate_is_a_400_not_a_500(base, route, body):
    answer = _post(base, route, body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_text" and "not valid Unicode" in error["message"]
    _still_serving(base)


def test_a_request_that_can_never_fit_is_a_400_not_a_retry_loop(base):
    # 2 running + 2 waiting: five prompts in one request can never be accepted, even on an idle server
    answer = httpx.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": ["a"] * 5, "max_tokens": 1})
    assert answer.status_code == 400 and "retry-after" not in answer.headers
    assert answer.json()["error"]["code"] == "too_many_prompts"
    assert "at most 4 at a time" in answer.json()["error"]["message"]
    four = httpx.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": ["a"] * 4, "max_tokens": 1})
    assert four.status_code == 200 and len(four.json()["choices"]) == 4


def test_text_over_the_limit_is_refused_before_tokenizing(base):
    limit = 16 * 2048  # 16 characters per token of the tiny model's context
    for route, body in [("/v1/completions", {"model": "tiny", "prompt": "x" * (limit + 1)}),
                        ("/tokenize", {"prompt": "x" * (limit + 1)})]:
        started = time.perf_counter()
        answer = httpx.post(f"{base}{route}", json=body, timeout=30)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "prompt_too_long"
        assert f"limit of {limit}" in answer.json()["error"]["message"]
        assert time.perf_counter() - started < 5
    assert httpx.post(f"{base}/tokenize", json={"prompt": "x" * limit}).json()["count"] == limit


@pytest.mark.parametrize(("route", "body", "field"), [
    ("/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": True}, "max_tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 2.0}, "max_tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": [5, 14622.0]}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": [True, 5]}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "Hi", "ignore_eos": 1}, "ignore_eos"),
    ("/detokenize", {"tokens": [5, True]}, "tokens"),
    ("/tokenize", {"prompt": "Hi", "add_special_tokens": "false"}, "add_special_tokens"),
])
def test_integers_and_booleans_are_strict(base, route, body, field):
    answer = httpx.post(f"{base}{route}", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"].startswith(field)


def test_head_health(base):
    answer = httpx.head(f"{base}/health")
    assert answer.status_code == 200 and answer.content == b""


def test_a_body_that_never_arrives_gets_a_json_408(base):
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 500\r\n\r\n{\"model\": ")  # 490 bytes short
        started = time.perf_counter()
        answer = raw.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408") and b'"code":"body_timeout"' in answer
    assert time.perf_counter() - started < 5
    _still_serving(base)


def test_a_long_prompt_does_not_stall_a_running_stream(base):
    # a stream runs; a 1,900-token prompt arrives: it is prefilled 16 tokens a step, and the stream gets a token
    # every step meanwhile (before: none until the whole prompt was prefilled)
    arrivals: list[float] = []
    started = threading.Event()

    def stream():
        with httpx.stream("POST", f"{base}/v1/completions", json={
                "model": "tiny", "prompt": "Hello", "max_tokens": 1500, "stream": True, "ignore_eos": True,
                "temperature": 0}, timeout=120) as answer:
            for line in answer.iter_lines():
                if line.startswith("data: {"):
                    arrivals.append(time.perf_counter())
                    started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(60)
    sent = time.perf_counter()
    long = httpx.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": [7] * 1900, "max_tokens": 1},
                      timeout=120)
    answered = time.perf_counter()
    reader.join(timeout=120)
    assert long.status_code == 200, long.text
    during = [t for t in arrivals if sent <= t <= answered]
    chunks = 1900 // CHUNK
    assert len(during) >= chunks // 2, (len(during), chunks)


def test_health_answers_while_a_prompt_is_tokenized(model_dir):
    tokenizing = threading.Event()

    def slow_loader():
        model = load_served_model(model_dir, device="cpu", threads=1, name="tiny")
        encode = model.runtime.encode

        def slow_encode(prompt):  # a tokenizer that takes 2 s (as an 8 MiB prompt did)
            tokenizing.set()
            time.sleep(2)
            return encode(prompt)

        model.runtime.encode = slow_encode
        return model

    with running_server(slow_loader) as (url, _):
        wait_healthy(url)
        slow = threading.Thread(target=lambda: httpx.post(
            f"{url}/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 1}, timeout=30))
        slow.start()
        assert tokenizing.wait(10)
        started = time.perf_counter()
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert time.perf_counter() - started < 0.5  # the event loop was not the tokenizer's
        slow.join(timeout=30)


def test_a_disconnect_storm_leaves_nothing_behind(base, model_dir):
    for _ in range(12):  # streams opened and dropped after their first chunk
        with httpx.stream("POST", f"{base}/v1/completions", json={
                "model": "tiny", "prompt": "Hello", "max_tokens": 1000, "stream": True, "ignore_eos": True},
                timeout=30) as answer:
            if answer.status_code == 200:
                next(answer.iter_lines())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = httpx.get(f"{base}/metrics").text
        if "prunex:num_requests_running 0.0" in text and "prunex:num_requests_waiting 0.0" in text:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("rows were left behind")
    assert "prunex:kv_cache_bytes 0.0" in httpx.get(f"{base}/metrics").text
    _still_serving(base)


def test_a_long_scoring_request_does_not_hold_back_new_requests(model_dir):
    # prompt scoring and new requests' prefills take turns for the step's chunk: a short request sent while a
    # 1,900-token prompt is being scored (4 tokens a chunk: ~475 chunks) is answered before the scoring is
    done: dict[str, float] = {}
    with running_server(tiny_loader(model_dir), max_batch=2, max_queue=2, prefill_chunk=4) as (url, _):
        wait_healthy(url)

        def score():
            httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": [7] * 1900, "max_tokens": 0,
                                                      "echo": True, "logprobs": 1}, timeout=120)
            done["score"] = time.perf_counter()

        scorer = threading.Thread(target=score)
        scorer.start()
        deadline = time.monotonic() + 30
        while "prunex:num_requests_waiting 1.0" not in httpx.get(f"{url}/metrics").text:  # the scoring is on
            assert time.monotonic() < deadline and "score" not in done
            time.sleep(0.005)
        answer = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 1},
                            timeout=120)
        done["short"] = time.perf_counter()
        scorer.join(timeout=120)
    assert answer.status_code == 200 and done["short"] < done["score"]
