"""Generator: continuous batching of text requests over a DecoderEngine, with the caller owning the loop.

    gen = runtime.generator()
    rid = gen.add_request("The capital of France is", SamplingParams(max_new_tokens=20))
    while not gen.is_done():
        for event in gen.step():
            print(event.text, end="")
    print(gen.result(rid).text)

Each `step()` first decodes one token for every running row, then prefills the requests added since (their
first token comes from the prefill), then lets finished rows leave the cache. Requests join and leave at any
step; a request that cannot fit waits (`add_request` raises CapacityError only when it could never fit).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from prunex.errors import PrunexError
from prunex.runtime.engine import DecoderEngine
from prunex.runtime.kv_cache import CapacityError
from prunex.runtime.sampling import SamplingParams, choose_tokens, make_rng
from prunex.runtime.session import torch_on_one_thread
from prunex.runtime.text_stream import TextStream


@dataclass
class Completion:
    """A finished (or running) request."""

    request_id: int
    prompt_tokens: int
    token_ids: list[int]
    text: str
    finish_reason: str | None  # "stop" (EOS / stop string), "length" (max_new_tokens), "cancelled"; None: running
    first_token_seconds: float | None = None  # from the step that admitted it to its first token


@dataclass
class StepEvent:
    """What one step produced for one request."""

    request_id: int
    token_id: int
    text: str  # newly settled text (may be empty while a stop string could still be forming)
    finished: bool


@dataclass
class _Request:
    id: int
    prompt: list[int]
    params: SamplingParams
    stream: TextStream
    rng: torch.Generator
    finish_reason: str | None = None
    first_token_seconds: float | None = None
    tokens: list[int] = field(default_factory=list)


class Generator:
    """Runs many requests through one engine; rows of the batch are the running requests, in admission order."""

    def __init__(self, engine: DecoderEngine, tokenizer, eos_token_id: int | None = None) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self._waiting: list[_Request] = []
        self._running: list[_Request] = []  # row r of the engine is _running[r]
        self._done: dict[int, _Request] = {}
        self._next_id = 0
        self._held_at_finish = 0  # K/V entries the finished requests' rows held when they left
        self._dense_at_finish = 0  # entries a dense cache would have held for them
        self._tokens = 0
        self._started = time.perf_counter()

    # --- requests ----------------------------------------------------------------------------------------
    def add_request(self, prompt: list[int], params: SamplingParams | None = None) -> int:
        """Queue a tokenized prompt; returns its request id. Raises PrunexError if it can never run."""
        params = params or SamplingParams()
        params.check()
        limit = self.engine.manifest.max_positions
        if not prompt:
            raise PrunexError("the prompt is empty")
        if limit and len(prompt) + params.max_new_tokens > limit:
            raise CapacityError(
                f"{len(prompt)} prompt tokens + max_new_tokens {params.max_new_tokens} exceed the model's context "
                f"of {limit}: shorten the prompt or lower max_new_tokens"
            )
        request = _Request(self._next_id, list(prompt), params, TextStream(self.tokenizer, params.stop),
                           make_rng(params.seed))
        self._next_id += 1
        self._waiting.append(request)
        return request.id

    def is_done(self) -> bool:
        """True when no request is waiting or running."""
        return not self._waiting and not self._running

    def result(self, request_id: int) -> Completion:
        """The completion of a request (finished, or as far as it got)."""
        request = self._done.get(request_id) or next(
            (r for r in self._running + self._waiting if r.id == request_id), None)
        if request is None:
            raise PrunexError(f"no request {request_id}")
        return Completion(request.id, len(request.prompt), list(request.tokens), request.stream.text,
                          request.finish_reason, request.first_token_seconds)

    @property
    def running(self) -> int:
        return len(self._running)

    def stats(self) -> dict:
        """KV-cache and speed figures so far. Entries count each request once: as it left the cache if it has
        finished, as it is now if it is running. kv_bytes / dense_kv_bytes: bytes of those entries with pruning /
        without; kv_allocated_bytes: the slot buffers now (held entries, holes, headroom), and their peak."""
        cache = self.engine.cache
        held = self._held_at_finish + int(cache.held_entries().sum())
        dense = self._dense_at_finish + int(cache.tokens_seen.sum()) * cache.num_layers
        return {
            "kv_kept_fraction": held / dense if dense else 1.0,
            "kv_bytes": held * cache.bytes_per_entry, "dense_kv_bytes": dense * cache.bytes_per_entry,
            "kv_allocated_bytes": cache.allocated_bytes(), "kv_peak_allocated_bytes": cache.peak_allocated_bytes,
            "tokens": self._tokens, "seconds": time.perf_counter() - self._started,
        }

    def cancel(self, request_id: int) -> None:
        """Stop a waiting or running request now (finish_reason "cancelled"); its row leaves the cache."""
        for request in self._waiting:
            if request.id == request_id:
                self._waiting.remove(request)
                request.finish_reason = "cancelled"
                self._done[request.id] = request
                return
        for request in self._running:
            if request.id == request_id:
                request.finish_reason = "cancelled"
                self._retire()
                return
        raise PrunexError(f"no waiting or running request {request_id}")

    def close(self) -> None:
        """Drop every running and waiting request (their rows leave the cache)."""
        self._waiting.clear()
        if self._running:
            self._running.clear()
            self.engine.remove_rows([])

    # --- the loop ----------------------------------------------------------------------------------------
    def step(self) -> list[StepEvent]:
        """Decode one token for every running request, admit waiting ones (prefill), retire finished ones."""
        events: list[StepEvent] = []
        with torch_on_one_thread():
            if self._running:
                last = torch.tensor([r.tokens[-1] for r in self._running])
                logits = self.engine.decode(last)  # (B, vocab)
                events += self._take(self._running, logits)
            events += self._admit()
            self._retire()
        return events

    def _admit(self) -> list[StepEvent]:
        """Prefill waiting requests while rows are free (one prompt at a time keeps prefill memory small)."""
        events: list[StepEvent] = []
        while self._waiting and self.engine.rows < self.engine.cache.limits.max_rows:
            request = self._waiting[0]
            started = time.perf_counter()
            try:
                logits = self.engine.prefill([request.prompt])  # (1, vocab)
            except CapacityError:
                if not self._running:
                    raise  # nothing will ever free room for it
                break  # back-pressure: it waits until rows finish
            self._waiting.pop(0)
            self._running.append(request)
            events += self._take([request], logits)
            request.first_token_seconds = time.perf_counter() - started
        return events

    def _take(self, requests: list[_Request], logits: torch.Tensor) -> list[StepEvent]:
        """Choose and record one token for each request from its logits row."""
        tokens = choose_tokens(logits, [r.params for r in requests], [r.rng for r in requests])
        events = []
        for request, token in zip(requests, tokens.tolist()):
            request.tokens.append(token)
            self._tokens += 1
            text = request.stream.push(token)
            if request.stream.stopped or (token == self.eos_token_id and not request.params.ignore_eos):
                request.finish_reason = "stop"
            elif len(request.tokens) >= request.params.max_new_tokens:
                request.finish_reason = "length"
            if request.finish_reason is not None:
                text += request.stream.flush()
            events.append(StepEvent(request.id, token, text, request.finish_reason is not None))
        return events

    def _retire(self) -> None:
        """Finished requests leave the batch (and the cache)."""
        keep = [row for row, r in enumerate(self._running) if r.finish_reason is None]
        if len(keep) == len(self._running):
            return
        held = self.engine.cache.held_entries()  # (B,)
        for row, r in enumerate(self._running):
            if r.finish_reason is not None:
                self._done[r.id] = r
                self._held_at_finish += int(held[row])
                self._dense_at_finish += int(self.engine.cache.tokens_seen[row]) * self.engine.cache.num_layers
        self._running = [self._running[row] for row in keep]
        self.engine.remove_rows(keep)
