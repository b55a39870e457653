"""The FastAPI app of `prunex serve`: thin routes over `Serving`, errors in OpenAI's shape, SSE, metrics.

    app = create_app(lambda: load_served_model("exported/smollm2-dcp"), ServeSettings())  # serve/model.py
    uvicorn.run(app, host="127.0.0.1", port=8000)

The model loads on a thread after start-up: `/health` answers 503 `{"error": {"code": 503, "message":
"Loading model"}}` until it is ready, then 200, and is never behind the API key. With an API key, every other
route (docs and `/metrics` included) needs `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from prunex.serve import protocol as p
from prunex.serve.metrics import Metrics
from prunex.serve.model import ServedModel
from prunex.serve.scheduler import Scheduler
from prunex.serve.serving import ServeError, Serving

log = logging.getLogger(__name__)

ERRORS = {code: {"model": p.ErrorResponse} for code in (400, 401, 404, 408, 413, 500, 503)}
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {
    "type": "string", "description": "a JSON chunk (the route's chunk object, or an error body), or [DONE]"}}}
STREAMED = {200: {"content": {"text/event-stream": {"schema": SSE_EVENT}},
                  "description": "JSON, or server-sent events with `stream: true`"}}
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/classify", "/health", "/metrics",
          "/tokenize", "/detokenize", "/tokenizer_info")


@dataclass
class ServeSettings:
    """How `prunex serve` runs (the CLI options)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # Bearer token every route but /health needs (None: open)
    max_batch: int = 16  # requests decoded together (continuous batching)
    max_queue: int = 64  # requests that may wait for a row; past it: 503 with Retry-After
    device: str = "auto"
    threads: int | None = None  # ONNX Runtime intra-op threads (None: torch's count)
    max_body_bytes: int = 8 * 2**20  # larger request bodies get 413
    body_timeout: float = 10.0  # seconds a client may take to send its whole body; past it: 408, connection closed
    max_prompt_chars: int | None = None  # longer text is refused untokenized (None: 16 x the model's context)
    prefill_chunk: int = 256  # prompt tokens prefilled between two decode steps (bounds a stream's stall);
    # 0: each prompt whole before the next step (the most throughput for offline batches, the longest stalls)


class _State:
    """The app's model, scheduler and serving logic once loaded (None while loading)."""

    def __init__(self) -> None:
        self.serving: Serving | None = None
        self.scheduler: Scheduler | None = None
        self.load_error: str | None = None
        self.classify_lock = threading.Lock()


def _error(err: ServeError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class _Guard:
    """ASGI middleware: API key (every route but /health), body size limit, requests counted by status."""

    def __init__(self, app, settings: ServeSettings, metrics: Metrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = {"code": 500}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is None and scope["method"] in ("POST", "PUT", "PATCH"):
                body, refusal = await self._read_body(receive)
                if refusal is None:
                    receive = _replay(body, receive)
            if refusal is not None:
                return await _error(refusal)(scope, receive, counted_send)
            await self.app(scope, receive, counted_send)
        finally:
            self.metrics.requests.labels(route, str(status["code"])).inc()

    def _refusal(self, scope) -> ServeError | None:
        key = self.settings.api_key
        if key is None or scope["path"] == "/health":
            return None
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"")
        if not hmac.compare_digest(given, f"Bearer {key}".encode("latin-1")):
            return ServeError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                              type="authentication_error", code="invalid_api_key")
        return None

    async def _read_body(self, receive) -> tuple[bytes, ServeError | None]:
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.settings.body_timeout
        while True:
            try:  # a body announced and never sent in full (a wrong Content-Length, a stalled client) ends here
                message = await asyncio.wait_for(receive(), max(deadline - asyncio.get_running_loop().time(), 0))
            except asyncio.TimeoutError:
                return b"", ServeError(408, f"the request body did not arrive within {self.settings.body_timeout:g} s "
                                       "(is Content-Length right?)", code="body_timeout",
                                       headers={"Connection": "close"})
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.settings.max_body_bytes:
                return b"", ServeError(413, f"the request body is over {self.settings.max_body_bytes} bytes",
                                       code="body_too_large")
            if not message.get("more_body", False):
                break
        return b"".join(chunks), None


def _replay(body: bytes, receive):
    """A receive that gives the buffered body once, then waits on the real one (to see a disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def create_app(load: Callable[[], ServedModel], settings: ServeSettings | None = None) -> FastAPI:
    """The app; `load` runs on a thread after start-up (the model loads while /health says 503)."""
    settings = settings or ServeSettings()
    metrics = Metrics()
    state = _State()

    def load_in_background() -> None:
        try:
            model = load()
            scheduler = None
            if model.runtime is not None:
                scheduler = Scheduler(model.runtime, settings.max_batch, settings.max_queue, metrics,
                                      settings.prefill_chunk)
                scheduler.start()
            state.scheduler, state.serving = scheduler, Serving(model, scheduler, settings.max_prompt_chars)
            log.info("serving %s", model.name)
        except Exception as err:  # the server stays up and says why on /health
            log.exception("loading the model failed")
            state.load_error = str(err)

    @asynccontextmanager
    async def lifespan(_app):
        threading.Thread(target=load_in_background, name="prunex-load", daemon=True).start()
        yield
        if state.scheduler is not None:
            state.scheduler.stop()
        if state.serving is not None:
            state.serving.close()

    app = FastAPI(title="prunex serve", version="1", lifespan=lifespan, description=(
        "An OpenAI-compatible server over the prunex runtime (pruned K/V cache, continuous batching). "
        "Fields and routes marked `x-prunex-extension` are prunex's own."))
    app.add_middleware(_Guard, settings=settings, metrics=metrics)

    def serving() -> Serving:
        if state.serving is None:
            message = f"the model failed to load: {state.load_error}" if state.load_error else "Loading model"
            raise ServeError(503, message, type="unavailable_error", code="model_loading",
                             headers={"Retry-After": "5"})
        return state.serving

    @app.exception_handler(ServeError)
    async def serve_error(_request, err: ServeError):
        return _error(err)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, err: RequestValidationError):
        first = err.errors()[0]
        where = [str(x) for x in first.get("loc", ()) if x != "body"]
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', message)}"
        elif first.get("type") == "extra_forbidden":
            message = f"unrecognized request argument supplied: {'.'.join(where)}"
        elif where:
            message = f"{'.'.join(where)}: {message}"
        return _error(ServeError(400, message, param=".".join(where) or None, code=first.get("type")))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, err: StarletteHTTPException):
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return _error(ServeError(err.status_code, str(err.detail), type=kind))

    @app.exception_handler(Exception)
    async def internal(_request, err: Exception):
        log.exception("an unexpected error")
        return _error(ServeError(500, f"internal error: {err}", type="server_error"))

    @app.post("/v1/completions", response_model=p.Completion, responses={**ERRORS, **STREAMED})
    async def completions(body: p.CompletionRequest, request: Request):
        """OpenAI completions: `prompt` as text, texts, token ids or lists of ids; `echo` + `logprobs` score the
        prompt through the pruned graph (`max_tokens: 0` scores only)."""
        s = serving()
        if body.stream:
            return EventSourceResponse(_as_events(await s.completion_stream(body, request.is_disconnected)))
        return await s.completion(body, request.is_disconnected)

    @app.post("/v1/chat/completions", response_model=p.ChatCompletion, responses={**ERRORS, **STREAMED})
    async def chat_completions(body: p.ChatCompletionRequest, request: Request):
        """OpenAI chat completions, through the tokenizer's chat template."""
        s = serving()
        if body.stream:
            return EventSourceResponse(_as_events(await s.chat_stream(body, request.is_disconnected)))
        return await s.chat(body, request.is_disconnected)

    @app.get("/v1/models", response_model=p.ModelList, responses=ERRORS)
    async def models():
        model = serving().model
        return p.ModelList(data=[p.Model(id=model.name, created=model.created, max_model_len=model.context)])

    @app.post("/tokenize", response_model=p.TokenizeResponse, responses=ERRORS)
    async def tokenize(body: p.TokenizeRequest):
        return await serving().tokenize(body)

    @app.post("/detokenize", response_model=p.DetokenizeResponse, responses=ERRORS)
    async def detokenize(body: p.DetokenizeRequest):
        return await serving().detokenize(body)

    @app.get("/tokenizer_info", response_model=p.TokenizerInfo, responses=ERRORS)
    async def tokenizer_info():
        return serving().tokenizer_info()

    @app.post("/v1/classify", response_model=p.ClassifyResponse, responses=ERRORS,
              openapi_extra=p.EXTENSION)
    async def classify(body: p.ClassifyRequest):
        """prunex's own route: an exported encoder classifier (LTP) labels texts; `tokens_kept` says how many
        tokens each layer kept."""
        s = serving()

        def run():
            with state.classify_lock:
                return s.classify(body)

        return await anyio.to_thread.run_sync(run)

    @app.get("/health", response_model=p.Health, responses={503: {"model": p.Loading}})
    async def health():
        """200 once the model is loaded; 503 while it loads (never behind the API key)."""
        if state.serving is None:
            message = f"Failed to load model: {state.load_error}" if state.load_error else "Loading model"
            return JSONResponse({"error": {"code": 503, "message": message, "type": "unavailable_error"}},
                                status_code=503)
        return p.Health()

    app.head("/health", include_in_schema=False)(health)  # load balancers probe with HEAD

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **ERRORS})
    async def prometheus_metrics():
        """Prometheus text: requests by route and status, tokens, TTFT and inter-token latency, running and
        waiting requests, K/V bytes held vs the dense equivalent."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict:
        """FastAPI's document without the 422 answers it adds by itself: validation errors are 400 here."""
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            for path in document["paths"].values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                document.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi
    app.state.prunex = state
    app.state.metrics = metrics
    return app


async def _as_events(lines):
    """SSE events from data lines (sse-starlette cancels this on a disconnect: the ticket is cancelled)."""
    async for line in lines:
        yield {"data": line}


def run(load: Callable[[], ServedModel], settings: ServeSettings) -> None:
    """Serve until interrupted (uvicorn on settings.host:settings.port)."""
    import uvicorn

    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable beyond this machine%s", settings.host,
                    "" if settings.api_key else " and without an API key")
    uvicorn.run(create_app(load, settings), host=settings.host, port=settings.port, log_level="info")

