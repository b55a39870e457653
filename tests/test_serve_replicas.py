"""`prunex serve --replicas 2` on Ray Serve, on loopback: 16 concurrent streaming clients (the official `openai`
client) each get the greedy text one replica gives alone; a replica killed mid-run fails only its own requests,
cleanly, and the deployment comes back to two replicas."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import psutil
import pytest
from serve_helpers import export_tiny, free_port

from prunex.runtime.runtime import Runtime
from prunex.runtime.sampling import SamplingParams

pytestmark = pytest.mark.slow

PROMPTS = [f"Prompt number {i}: " + "words " * (i % 5) for i in range(16)]


def _replica_processes() -> list[psutil.Process]:
    """The replica actors' processes (Ray names them `ray::ServeReplica:<app>:<deployment>`)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any("ServeReplica:prunex" in part for part in process.info["cmdline"] or ()):
            found.append(process)
    return found


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """(base url, exported dir) of `prunex serve DIR --replicas 2 --threads 1` in a process of its own."""
    directory = export_tiny(tmp_path_factory.mktemp("replicas") / "tiny")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "prunex", "serve", directory, "--replicas", "2", "--threads", "1", "--port", str(port),
         "--model-name", "tiny", "--device", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: _healthy(base) and len(_replica_processes()) == 2, 180, "two replicas")
        yield base, directory
    finally:
        os.killpg(server.pid, signal.SIGINT)  # serve.shutdown and ray.shutdown, then the process exits
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True)


async def _stream(client: openai.AsyncOpenAI, prompt: str, max_tokens: int, started: list | None = None
                  ) -> tuple[str, str | None]:
    """The streamed text and its finish reason (None: the stream ended without one); appends to `started`
    when the first text arrives."""
    text, finish = "", None
    stream = await client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                             stream=True, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices:
            if not text and started is not None:
                started.append(prompt)
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_sixteen_streams_get_the_text_one_replica_gives(replicas):
    base, directory = replicas
    runtime = Runtime(directory, device="cpu", threads=1)
    alone = [runtime.generate([p], SamplingParams(max_new_tokens=12, ignore_eos=True))[0].text for p in PROMPTS]

    async def run():
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
        return await asyncio.gather(*(_stream(client, p, 12) for p in PROMPTS))

    answers = asyncio.run(run())
    assert [text for text, _ in answers] == alone
    assert all(finish == "length" for _, finish in answers)


def test_a_killed_replica_fails_only_its_own_requests_and_comes_back(replicas):
    base, _ = replicas

    async def run():
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)

        started: list[str] = []

        async def one(prompt):
            try:
                return await _stream(client, prompt, 2000 - len(prompt), started)
            except (openai.APIError, httpx.HTTPError) as err:
                return "", f"error: {type(err).__name__}"

        tasks = [asyncio.create_task(one(p)) for p in PROMPTS]
        while len(started) < len(PROMPTS):  # every stream is under way (bounded by the wait_for below)
            await asyncio.sleep(0.01)
        _replica_processes()[0].send_signal(signal.SIGKILL)
        return await asyncio.wait_for(asyncio.gather(*tasks), 180)  # no hang

    outcomes = asyncio.run(run())
    finished = [finish for _, finish in outcomes if finish == "length"]
    failed = [finish for _, finish in outcomes if finish != "length"]
    assert finished and failed, outcomes  # the survivor's requests completed, the dead one's did not
    assert all(len(text) > 0 for text, finish in outcomes if finish == "length")
    _wait_for(lambda: len(_replica_processes()) == 2, 120, "Ray Serve to replace the replica")
    _wait_for(lambda: _healthy(base), 60, "the deployment to answer")
    again = httpx.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 3}, timeout=60)
    assert again.status_code == 200


def test_the_application_builder_for_serve_run():
    """`serve run prunex.serve.replicas:build key=value ...` on a cluster: the deployment's options come through."""
    from prunex.errors import PrunexError
    from prunex.serve.replicas import build

    fixed = build({"source": "/models/x", "replicas": "3", "threads": "2", "max_batch": "4", "max_queue": "8",
                   "max_queued_requests": "100"})._bound_deployment
    assert (fixed.name, fixed.num_replicas, fixed.max_ongoing_requests, fixed.max_queued_requests) == (
        "prunex", 3, 12, 100)  # a replica is sent at most its own batch + queue
    assert fixed.ray_actor_options["num_cpus"] == 2
    scaling = build({"source": "/models/x", "replicas": "1", "max_replicas": "4"})._bound_deployment
    config = scaling._deployment_config.autoscaling_config
    assert (config.min_replicas, config.max_replicas) == (1, 4)
    with pytest.raises(PrunexError, match="unknown arguments"):
        build({"source": "/models/x", "replicaz": "2"})
