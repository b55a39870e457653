"""Generator: continuous batching of text requests over a DecoderEngine, with the caller owning the loop.

    gen = runtime.generator()
    rid = gen.add_request("The capital of France is", SamplingParams(max_new_tokens=20))
    while not gen.is_done():
        for event in gen.step():
            print(event.text, end="")
    print(gen.result(rid).text)    # a finished request's result is handed over once, then forgotten

Each `step()` first decodes one token for every running row, then prefills the requests added since (their
first token comes from the prefill), then lets finished rows leave the cache. With `prefill_budget` set (the
server sets it to one chunk), a step prefills at most that many prompt tokens: a long prompt is fed a chunk a
step (`PromptRun`) while the running rows go on decoding, so it delays their next token by one chunk's time.
Requests join and leave at any step; a request that cannot fit waits (`add_request` raises CapacityError
only when it could never fit). A request whose prefill fails leaves the generator with finish_reason "error"
(its Completion holds the exception) and the other requests go on; a failed decode step raises, and the
running rows stay as they were. The generator keeps no history: a finished request is dropped once its result
has been taken, so a long-running owner (the server's scheduler) does not grow.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from prunex.errors import PrunexError
from prunex.runtime.engine import DecoderEngine, PromptRun
from prunex.runtime.sampling import SamplingParams, choose_tokens, make_rng, token_logprobs
from prunex.runtime.scoring import PromptLogprobs
from prunex.runtime.session import torch_on_one_thread
from prunex.runtime.slot_cache import CapacityError
from prunex.runtime.text_stream import TextStream


@dataclass
class Completion:
    """A finished (or running) request."""

    request_id: int
    prompt_tokens: int
    token_ids: list[int]
    text: str
    finish_reason: str | None  # "stop" (EOS / stop string), "length" (max_new_tokens), "cancelled", "error";
    # None: running
    first_token_seconds: float | None = None  # from the step that admitted it to its first token
    kv_entries: int = 0  # K/V entries its row held (summed over layers) when it left the cache, or now
    dense_kv_entries: int = 0  # entries a dense cache would hold for the same tokens
    error: Exception | None = None  # what failed it (finish_reason "error")
    prompt_logprobs: PromptLogprobs | None = None  # with SamplingParams.prompt_logprobs

    @property
    def kv_kept_fraction(self) -> float:
        """Share of the dense-equivalent K/V entries this request's row held (1.0 before it had a row)."""
        return self.kv_entries / self.dense_kv_entries if self.dense_kv_entries else 1.0


@dataclass
class StepEvent:
    """What one step produced for one request."""

    request_id: int
    token_id: int
    text: str  # newly settled text (may be empty while a stop string could still be forming)
    finish_reason: str | None  # set on the request's last event: "stop" | "length" | "error" (token_id -1)
    logprob: float | None = None  # log-probability of token_id (when the request asked for logprobs)
    top_logprobs: list[tuple[int, float]] | None = None  # the most likely tokens and their log-probabilities
    prompt_logprobs: PromptLogprobs | None = None  # on a request's first event, when it asked for them

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


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
    kv_entries: int = 0  # set when its row leaves the cache
    dense_kv_entries: int = 0
    error: Exception | None = None
    prompt_logprobs: PromptLogprobs | None = None
    run: PromptRun | None = None  # its prompt's run while it is being prefilled
    started: float = 0.0  # when its prefill started


class Generator:
    """Runs many requests through one engine; rows of the batch are the running requests, in admission order."""

    def __init__(self, engine: DecoderEngine, tokenizer, eos_token_id: int | None = None) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.prefill_budget: int | None = None  # prompt tokens a step may prefill (None: every waiting prompt)
        self._waiting: list[_Request] = []
        self._filling: _Request | None = None  # the request whose prompt is being prefilled, chunk by chunk
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
        return not self._waiting and not self._running and self._filling is None

    @property
    def prefilling(self) -> bool:
        """True while a prompt is part-way through its prefill."""
        return self._filling is not None

    @property
    def admitting(self) -> bool:
        """True when a step's prefill has work: a prompt part-way, or a waiting one and a free row."""
        return self.prefilling or (bool(self._waiting) and self.engine.rows < self.engine.cache.limits.max_rows)

    def result(self, request_id: int) -> Completion:
        """The completion of a request: as far as it got while it runs; once finished, handed over once (the
        generator forgets it, so it keeps no history)."""
        request = self._done.pop(request_id, None)
        if request is None:
            row = next((row for row, r in enumerate(self._running) if r.id == request_id), None)
            if row is not None:
                request = self._running[row]
                cache = self.engine.cache
                request.kv_entries = int(cache.held_entries()[row])
                request.dense_kv_entries = int(cache.tokens_seen[row]) * cache.num_layers
            else:
                request = next((r for r in self._queued() if r.id == request_id), None)
        if request is None:
            raise PrunexError(f"no request {request_id} (a finished request's result is handed over once)")
        return Completion(request.id, len(request.prompt), list(request.tokens), request.stream.text,
                          request.finish_reason, request.first_token_seconds, request.kv_entries,
                          request.dense_kv_entries, request.error, request.prompt_logprobs)

    def _queued(self) -> list[_Request]:
        """Requests without a row yet: the one being prefilled, then the waiting ones."""
        return ([self._filling] if self._filling is not None else []) + self._waiting

    @property
    def waiting(self) -> int:
        """Requests without a row yet (the one being prefilled included)."""
        return len(self._queued())

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
        for request in self._queued():
            if request.id == request_id:
                if request is self._filling:
                    self._filling = None  # its prompt's cache goes with it
                else:
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
        self._filling = None
        self._done.clear()
        if self._running:
            self._running.clear()
            self.engine.remove_rows([])

    # --- the loop ----------------------------------------------------------------------------------------
    def step(self, prefill: bool = True) -> list[StepEvent]:
        """Decode one token for every running request, admit waiting ones (prefill; not with prefill=False),
        retire finished ones."""
        events: list[StepEvent] = []
        with torch_on_one_thread():
            if self._running:
                last = torch.tensor([r.tokens[-1] for r in self._running])
                logits = self.engine.decode(last)  # (B, vocab)
                events += self._take(self._running, logits)
            if prefill:
                events += self._admit()
            self._retire()
        return events

    def _admit(self) -> list[StepEvent]:
        """Prefill waiting requests while rows are free, one prompt at a time (prefill memory stays one prompt's),
        up to `prefill_budget` prompt tokens; a prompt that is done joins the batch with its first token."""
        events: list[StepEvent] = []
        budget = self.prefill_budget if self.prefill_budget is not None else math.inf
        while budget > 0:
            request = self._filling or self._start_prefill(events)
            if request is None:
                break
            try:
                if not request.run.done:
                    budget -= request.run.advance()
                    continue
                self.engine.add_prompt(request.run)
            except Exception as err:  # onnxruntime raises its own types; any failure is this request's
                if isinstance(err, CapacityError) and request.run.done and self._running:
                    break  # back-pressure: its prompt waits, run, until rows finish
                self._filling = None  # nothing will ever free room for it, or the engine refused it
                self._fail(request, err, events)
                continue
            events += self._join(request)
        return events

    def _start_prefill(self, events: list[StepEvent]) -> _Request | None:
        """The next waiting request, its prompt run started, if a row is free (None otherwise)."""
        while self._waiting and self.engine.rows < self.engine.cache.limits.max_rows:
            request = self._waiting.pop(0)
            request.started = time.perf_counter()
            try:
                request.run = self.engine.prompt_run(request.prompt, score_top=request.params.prompt_logprobs)
            except Exception as err:
                self._fail(request, err, events)
                continue
            self._filling = request
            return request
        return None

    def _fail(self, request: _Request, err: Exception, events: list[StepEvent]) -> None:
        request.finish_reason, request.error, request.run = "error", err, None
        self._done[request.id] = request
        events.append(StepEvent(request.id, -1, "", "error"))

    def _join(self, request: _Request) -> list[StepEvent]:
        """A prefilled request's row has joined the batch: its first token, from the prefill's last logits."""
        run, request.run, self._filling = request.run, None, None
        self._running.append(request)
        if run.scorer is not None:  # one pass: the prompt's log-probabilities from the prefill's own logits
            request.prompt_logprobs = run.scorer.result()
        logits = torch.from_numpy(run.next_logits)[None].to(self.engine.device)  # (1, vocab)
        events = self._take([request], logits)
        events[-1].prompt_logprobs = request.prompt_logprobs
        request.first_token_seconds = time.perf_counter() - request.started
        return events

    def _take(self, requests: list[_Request], logits: torch.Tensor) -> list[StepEvent]:
        """Choose and record one token for each request from its logits row."""
        tokens = choose_tokens(logits, [r.params for r in requests], [r.rng for r in requests])
        events = []
        for row, (request, token) in enumerate(zip(requests, tokens.tolist())):
            request.tokens.append(token)
            self._tokens += 1
            text = request.stream.push(token)
            if request.stream.stopped or (token == self.eos_token_id and not request.params.ignore_eos):
                request.finish_reason = "stop"
            elif len(request.tokens) >= request.params.max_new_tokens:
                request.finish_reason = "length"
            if request.finish_reason is not None:
                text += request.stream.flush()
            event = StepEvent(request.id, token, text, request.finish_reason)
            if request.params.logprobs is not None:
                event.logprob, event.top_logprobs = token_logprobs(logits[row], token, request.params.logprobs)
            events.append(event)
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
                r.kv_entries = int(held[row])
                r.dense_kv_entries = int(self.engine.cache.tokens_seen[row]) * self.engine.cache.num_layers
                self._held_at_finish += r.kv_entries
                self._dense_at_finish += r.dense_kv_entries
        self._running = [self._running[row] for row in keep]
        self.engine.remove_rows(keep)
