"""Starting the real server (uvicorn on a free loopback port, in a thread) on a tiny exported model."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import httpx
import uvicorn
from conftest import dropping_policy

from prunex.export.decoder import export_decoder
from prunex.models.sources import load_model
from prunex.prune.lm import PrunedLM
from prunex.serve.app import ServeSettings, create_app
from prunex.serve.model import load_served_model

# A chat template for the byte-level test tokenizer (the tiny models have none).
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def export_tiny(out) -> str:
    """A tiny Llama whose DCP heads drop many entries, exported with a chat template; returns the dir."""
    base = load_model("tiny-llama")
    base.tokenizer.chat_template = CHAT_TEMPLATE
    export_decoder(PrunedLM(base, dropping_policy(base)), out, source="tiny-llama")
    return str(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(load, **settings):
    """Yields (base_url, app) of a server on 127.0.0.1; waits (bounded) until it listens."""
    port = free_port()
    app = create_app(load, ServeSettings(port=port, **settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_healthy(base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{base}/health").status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the model did not load")
        time.sleep(0.05)


def tiny_loader(directory: str, **kw):
    return lambda: load_served_model(directory, device="cpu", threads=1, name="tiny", **kw)
