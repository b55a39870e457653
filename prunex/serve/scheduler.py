"""The scheduler: one thread owns the runtime's Generator and drives it; HTTP handlers only submit and read.

    scheduler = Scheduler(runtime, max_batch=16, max_queue=64, metrics=metrics)
    scheduler.start()
    ticket = scheduler.submit([Job(0, prompt_ids, SamplingParams(max_new_tokens=16))], asyncio.get_running_loop())
    while not isinstance(item := await ticket.queue.get(), (Finished, Failed)):
        ...  # Token items (a score-only job: one Scored item)
    ticket.cancel()  # a client that went away: its rows leave the batch at the next step boundary

Requests join the running batch at step boundaries (continuous batching) up to `max_batch` rows; past that
they wait inside the generator; past `max_batch + max_queue` accepted jobs, `submit` raises QueueFull at once
(the route answers 503 with Retry-After), never a hang; a request with more jobs than that could ever hold
raises NeverFits (400). Prompts are prefilled one chunk (`prefill_chunk` tokens) per step between decode
steps, and so are score-only prompts, taking turns with them: a long prompt delays running streams by one
chunk's time per token, not by its whole prefill. Every engine call (prefill, decode, prompt scoring)
runs on the scheduler's thread; the event loop only awaits its per-request asyncio queue, so it is never
blocked by a model step. torch is set to one thread in the scheduler's thread, the only one that runs torch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from prunex.errors import PrunexError
from prunex.runtime.engine import PromptRun
from prunex.runtime.generator import Completion, StepEvent
from prunex.runtime.runtime import Runtime
from prunex.runtime.sampling import SamplingParams
from prunex.runtime.scoring import PromptLogprobs
from prunex.serve.metrics import Metrics

log = logging.getLogger(__name__)


class QueueFull(PrunexError):
    """The batch and the wait queue are full: retry later."""


class NeverFits(PrunexError):
    """A request with more jobs than the batch and the wait queue hold together: it could never be accepted."""


@dataclass
class Job:
    """One prompt of a request (a request with several prompts is several jobs, one per choice index)."""

    index: int
    prompt: list[int]
    params: SamplingParams  # prompt_logprobs: the prompt's tokens scored too (in the prefill's one pass)
    generate: bool = True  # False: only score the prompt (max_tokens 0 with echo), outside the batch


@dataclass
class Scored:
    index: int
    logprobs: PromptLogprobs


@dataclass
class Token:
    index: int
    event: StepEvent


@dataclass
class Finished:
    index: int
    completion: Completion | None  # None for a job that only scored its prompt


@dataclass
class Failed:
    index: int
    error: Exception


Item = Scored | Token | Finished | Failed


@dataclass
class Ticket:
    """A submitted request: its jobs, and the queue the scheduler writes their items into (in order per job)."""

    scheduler: Scheduler
    loop: asyncio.AbstractEventLoop
    jobs: list[Job]
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    open_jobs: int = 0  # jobs not finished yet (scheduler thread only)

    def cancel(self) -> None:
        """Stop whatever is left of this request (a no-op once it has finished)."""
        self.scheduler.cancel(self)


@dataclass
class _Running:
    ticket: Ticket
    job: Job
    last_token_at: float | None = None


class Scheduler:
    """Owns one Generator over `runtime` and runs it on a thread of its own."""

    def __init__(self, runtime: Runtime, max_batch: int, max_queue: int, metrics: Metrics,
                 prefill_chunk: int | None = None) -> None:
        self.runtime, self.max_batch, self.max_queue, self.metrics = runtime, max_batch, max_queue, metrics
        self.generator = runtime.generator()
        if prefill_chunk:  # one prompt chunk per step; 0 or None: each prompt whole before the next step
            runtime.engine.prefill_chunk = prefill_chunk
            self.generator.prefill_budget = prefill_chunk
        self._lock = threading.Condition()
        self._inbox: deque[tuple[str, Ticket]] = deque()
        self._accepted = 0  # jobs submitted and not finished (waiting, scoring or running)
        self._scoring: deque[tuple[Ticket, Job]] = deque()  # score-only jobs, the first one being run
        self._score_run: PromptRun | None = None  # the first scoring job's run, part-way
        self._score_turn = False  # scoring and generation prompts take turns for the step's one chunk
        self._requests: dict[int, _Running] = {}  # generator request id -> its job
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="prunex-scheduler", daemon=True)

    # --- called from the event loop ----------------------------------------------------------------------
    def submit(self, jobs: list[Job], loop: asyncio.AbstractEventLoop) -> Ticket:
        """Accept a request's jobs, or raise QueueFull at once when the batch and the wait queue are full."""
        if len(jobs) > self.max_batch + self.max_queue:
            raise NeverFits(f"{len(jobs)} prompts in one request can never fit this server's {self.max_batch} "
                            f"running + {self.max_queue} waiting requests: send at most "
                            f"{self.max_batch + self.max_queue} at a time")
        with self._lock:
            if self._accepted + len(jobs) > self.max_batch + self.max_queue:
                raise QueueFull(f"the server is full ({self.max_batch} running, {self.max_queue} waiting): retry "
                                "shortly")
            self._accepted += len(jobs)
            ticket = Ticket(self, loop, jobs, open_jobs=len(jobs))
            self._inbox.append(("add", ticket))
            self._lock.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        with self._lock:
            self._inbox.append(("cancel", ticket))
            self._lock.notify()

    @property
    def accepted(self) -> int:
        return self._accepted

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True while the scheduler thread runs."""
        return self._thread.is_alive()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._thread.join(timeout=30)

    # --- the scheduler thread ----------------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_num_threads(1)  # this thread is the only torch user: small ops, no fan-out against ORT
        while True:
            with self._lock:
                while not (self._inbox or self._scoring or not self.generator.is_done() or self._stopping):
                    self._lock.wait()
                if self._stopping:
                    return
                inbox = list(self._inbox)
                self._inbox.clear()
            try:
                for action, ticket in inbox:
                    self._add(ticket) if action == "add" else self._cancel(ticket)
                score = bool(self._scoring) and (self._score_turn or not self.generator.admitting)
                if score:
                    self._score_chunk()
                self._score_turn = not score
                if not self.generator.is_done():
                    self._step(prefill=not score)
                self._observe()
            except Exception as err:  # a bug here must not leave clients waiting forever
                log.exception("the scheduler loop failed; failing the requests in flight")
                self._fail_all(err)

    def _deliver(self, ticket: Ticket, item: Item) -> None:
        try:
            ticket.loop.call_soon_threadsafe(ticket.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            pass
        if isinstance(item, (Finished, Failed)):
            ticket.open_jobs -= 1
            with self._lock:
                self._accepted -= 1

    def _add(self, ticket: Ticket) -> None:
        for job in ticket.jobs:
            if job.generate:
                self._admit(ticket, job)
            else:
                self._scoring.append((ticket, job))

    def _admit(self, ticket: Ticket, job: Job) -> None:
        try:
            rid = self.generator.add_request(job.prompt, job.params)
        except PrunexError as err:  # checked before, so only a limit the serving code did not know of
            self._deliver(ticket, Failed(job.index, err))
            return
        self._requests[rid] = _Running(ticket, job)

    def _score_chunk(self) -> None:
        """One chunk of the first score-only job: a pass of its prompt outside the batch and the cache."""
        ticket, job = self._scoring[0]
        try:
            if self._score_run is None:
                self._score_run = self.runtime.engine.prompt_run(job.prompt, score_top=job.params.prompt_logprobs or 0)
            self._score_run.advance()
            if not self._score_run.done:
                return
            score = self._score_run.scorer.result()
        except Exception as err:  # onnxruntime raises its own types: the request fails, the server goes on
            log.exception("scoring a prompt failed")
            self._end_scoring()
            self._deliver(ticket, Failed(job.index, err))
            return
        self._end_scoring()
        self.metrics.prompt_tokens.inc(len(job.prompt))
        self._deliver(ticket, Scored(job.index, score))
        self._deliver(ticket, Finished(job.index, None))

    def _end_scoring(self) -> None:
        self._scoring.popleft()
        self._score_run = None

    def _step(self, prefill: bool) -> None:
        try:
            events = self.generator.step(prefill)
        except Exception as err:  # a failed decode step fails the running requests, not the server
            log.exception("a decode step failed")
            for rid in list(self._requests):
                self._drop(rid, err)
            return
        now = time.perf_counter()
        for event in events:
            running = self._requests.get(event.request_id)
            if running is None:
                continue
            if event.finish_reason == "error":
                self._drop(event.request_id, self.generator.result(event.request_id).error)
                continue
            if running.last_token_at is None:
                self.metrics.time_to_first_token.observe(now - running.ticket.submitted)
            else:
                self.metrics.inter_token_latency.observe(now - running.last_token_at)
            running.last_token_at = now
            self.metrics.generation_tokens.inc()
            self._deliver(running.ticket, Token(running.job.index, event))
            if event.finished:
                completion = self.generator.result(event.request_id)
                del self._requests[event.request_id]
                self.metrics.prompt_tokens.inc(completion.prompt_tokens)
                self._deliver(running.ticket, Finished(running.job.index, completion))

    def _drop(self, rid: int, error: Exception | None) -> None:
        """Take a request out of the generator (if still there) and fail it with `error`."""
        running = self._requests.pop(rid)
        try:
            self.generator.cancel(rid)
        except PrunexError:
            pass  # it had already left (finished with an error)
        try:
            self.generator.result(rid)  # forget it
        except PrunexError:
            pass
        self._deliver(running.ticket, Failed(running.job.index, error or PrunexError("the engine failed")))

    def _fail_all(self, error: Exception) -> None:
        """Fail every request in flight and start from an empty generator."""
        for running in self._requests.values():
            self._deliver(running.ticket, Failed(running.job.index, error))
        for ticket, job in self._scoring:
            self._deliver(ticket, Failed(job.index, error))
        self._requests.clear()
        self._scoring.clear()
        self._score_run = None
        self.generator.close()

    def _cancel(self, ticket: Ticket) -> None:
        """A client went away: its waiting and running jobs leave now (rows freed before the next step)."""
        if ticket.open_jobs <= 0:
            return
        for rid in [rid for rid, r in self._requests.items() if r.ticket is ticket]:
            self._drop(rid, PrunexError("cancelled: the client went away"))
        for entry in [e for e in self._scoring if e[0] is ticket]:
            if entry is self._scoring[0]:
                self._score_run = None  # its part-way run goes with it
            self._scoring.remove(entry)
            self._deliver(ticket, Failed(entry[1].index, PrunexError("cancelled: the client went away")))

    def _observe(self) -> None:
        """Gauges after a step: rows running and waiting, K/V bytes held vs the dense equivalent."""
        cache = self.runtime.engine.cache
        running = self.generator.running
        self.metrics.running.set(running)
        self.metrics.waiting.set(self._accepted - running)
        held, dense = (cache.held_bytes(), cache.dense_bytes()) if cache.rows else (0, 0)
        self.metrics.kv_bytes.set(held)
        self.metrics.dense_kv_bytes.set(dense)
        self.metrics.kv_kept_fraction.set(held / dense if dense else 1.0)
