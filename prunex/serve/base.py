"""What every endpoint of `prunex serve` shares: errors in OpenAI's shape, the checks a request passes before
any engine work, the tokenizer threads, submitting jobs to the scheduler and reading back their items.

Tokenizer work (encoding prompts, decoding ids, building logprobs answers) runs on a small pool of worker
threads, never on the event loop, so `/health` and every stream go on while a large prompt is tokenized; text
longer than `max_prompt_chars` or not valid Unicode (a lone surrogate) is refused before any tokenizer sees it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prunex.errors import PrunexError
from prunex.runtime.generator import Completion as RunCompletion
from prunex.runtime.runtime import Runtime
from prunex.runtime.sampling import SamplingParams
from prunex.runtime.scoring import PromptLogprobs
from prunex.serve import protocol as p
from prunex.serve.model import ServedModel
from prunex.serve.scheduler import Failed, Finished, Job, NeverFits, QueueFull, Scheduler, Scored, Ticket, Token

RETRY_AFTER_SECONDS = 1
DISCONNECT_POLL_SECONDS = 0.5
TOKENIZER_THREADS = 2  # tokenizer calls run at once, off the event loop (the rest wait their turn)
CHARS_PER_CONTEXT_TOKEN = 16  # the default text limit: this many characters per token of the model's context


class ServeError(Exception):
    """An answer other than 200, with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Choice:
    """What one job has produced so far."""

    prompt: list[int]
    score: PromptLogprobs | None = None  # the prompt's, with echo + logprobs
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    tops: list[list[tuple[int, float]]] = field(default_factory=list)
    completion: RunCompletion | None = None
    finish_reason: str | None = None


def unsupported(condition: bool, param: str, what: str) -> None:
    if condition:
        raise ServeError(400, f"{param}: {what}", param=param, code="unsupported_parameter")


class ServingBase:
    """The shared part of the endpoints over one served model (`Serving` puts the endpoints together)."""

    def __init__(self, model: ServedModel, scheduler: Scheduler | None, max_prompt_chars: int | None = None) -> None:
        self.model, self.scheduler = model, scheduler
        # text longer than this is refused untokenized (no prompt that fits the context is anywhere near it)
        self.max_prompt_chars = max_prompt_chars or CHARS_PER_CONTEXT_TOKEN * (model.context or 8192)
        self._tokenizer_pool = ThreadPoolExecutor(TOKENIZER_THREADS, thread_name_prefix="prunex-tokenizer")

    def close(self) -> None:
        self._tokenizer_pool.shutdown(wait=False, cancel_futures=True)

    async def off_loop(self, work: Callable, *args):
        """`work(*args)` on a tokenizer thread; the event loop awaits it."""
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_pool, work, *args)

    def check_model(self, name: str | None, required: bool = True) -> None:
        if name is None and not required:
            return
        if name != self.model.name:
            raise ServeError(404, f"the model {name!r} does not exist; this server runs {self.model.name!r}",
                             param="model", code="model_not_found")

    def check_text(self, text: str, param: str) -> None:
        """Refuse text over the character limit or not encodable as UTF-8 (lone surrogates), before tokenizing."""
        if len(text) > self.max_prompt_chars:
            raise ServeError(400, f"{param}: {len(text)} characters is over this server's limit of "
                             f"{self.max_prompt_chars} ({CHARS_PER_CONTEXT_TOKEN} per token of the model's context, "
                             "or `prunex serve --max-prompt-chars`): no such text fits the context",
                             param=param, code="prompt_too_long")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ServeError(400, f"{param}: the text is not valid Unicode ({err.reason}: "
                             f"{err.object[err.start:err.end]!r} at character {err.start})", param=param,
                             code="invalid_text") from None

    def _runtime(self) -> Runtime:
        if self.model.runtime is None:
            raise ServeError(400, f"{self.model.name} is an encoder classifier: use POST /v1/classify",
                             code="wrong_model_kind")
        return self.model.runtime

    def _tokenizer(self):
        source = self.model.runtime or self.model.classifier
        return source.tokenizer

    def _check_prompt(self, ids: list[int], max_tokens: int, param: str = "prompt") -> None:
        """Refuse an empty prompt, ids outside the vocabulary, and prompts that do not fit with max_tokens."""
        runtime = self._runtime()
        if not ids:
            raise ServeError(400, "the prompt is empty: give at least one token", param=param)
        vocab = runtime.manifest.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise ServeError(400, f"token id {bad} is outside the vocabulary (0..{vocab - 1})", param=param)
        context, n, m = self.model.context, len(ids), max(max_tokens, 1)
        if context and n >= context:
            raise ServeError(400, f"the prompt has {n} tokens, {n - context + 1} more than fit the model's context "
                             f"of {context} (prompt and at least one more position); it is never truncated",
                             param=param, code="context_length_exceeded")
        if context and n + m > context:
            raise ServeError(400, f"the prompt's {n} tokens + max_tokens {m} exceed the model's context of "
                             f"{context} by {n + m - context}: lower max_tokens or shorten the prompt",
                             param="max_tokens", code="context_length_exceeded")

    def _params(self, req, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None = None
                ) -> SamplingParams:
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        seed = None if req.seed is None else req.seed % 2**63
        params = SamplingParams(max_new_tokens=max(max_tokens, 1), temperature=req.temperature or 0.0,
                                top_k=req.top_k or 0, top_p=req.top_p or 1.0, seed=seed, stop=stop,
                                ignore_eos=bool(req.ignore_eos), logprobs=logprobs,
                                prompt_logprobs=prompt_logprobs)
        try:
            params.check()
        except PrunexError as err:
            raise ServeError(400, str(err)) from None
        return params

    def _check_common(self, req) -> None:
        self.check_model(req.model)
        unsupported(req.n not in (None, 1), "n", "only n=1 is supported (send the request again for more)")
        unsupported(bool(req.frequency_penalty), "frequency_penalty", "only 0 is supported")
        unsupported(bool(req.presence_penalty), "presence_penalty", "only 0 is supported")
        unsupported(bool(req.logit_bias), "logit_bias", "not supported")

    def _submit(self, jobs: list[Job]) -> Ticket:
        try:
            return self.scheduler.submit(jobs, asyncio.get_running_loop())
        except QueueFull as err:
            raise ServeError(503, str(err), type="server_overloaded", code="queue_full",
                             headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        except NeverFits as err:
            raise ServeError(400, str(err), param="prompt", code="too_many_prompts") from None

    async def items(self, ticket: Ticket, is_disconnected) -> AsyncIterator[object]:
        """The ticket's items until every job has finished; cancels it if the client goes away or the
        consumer stops early (a streaming response cancelled on disconnect)."""
        open_jobs = len(ticket.jobs)
        checked = time.monotonic()
        try:
            while open_jobs:
                if time.monotonic() - checked >= DISCONNECT_POLL_SECONDS:  # also while tokens keep coming
                    checked = time.monotonic()
                    if await is_disconnected():
                        return
                try:
                    item = await asyncio.wait_for(ticket.queue.get(), DISCONNECT_POLL_SECONDS)
                except asyncio.TimeoutError:
                    continue
                if isinstance(item, (Finished, Failed)):
                    open_jobs -= 1
                yield item
        finally:
            if open_jobs:
                ticket.cancel()

    def _usage(self, choices: list[Choice]) -> p.Usage:
        runtime = self._runtime()
        done = [c.completion for c in choices if c.completion is not None]
        per_entry = runtime.engine.cache.bytes_per_entry
        held = sum(c.kv_entries for c in done)
        dense = sum(c.dense_kv_entries for c in done)
        prompt_tokens = sum(len(c.prompt) for c in choices)
        generated = sum(len(c.tokens) for c in choices)
        stats = p.PruningStats(kv_kept_fraction=held / dense if dense else 1.0, kv_bytes=held * per_entry,
                               dense_kv_bytes=dense * per_entry)
        return p.Usage(completion_tokens=generated, prompt_tokens=prompt_tokens,
                       total_tokens=prompt_tokens + generated, prunex=stats)

    @staticmethod
    def _record(choice: Choice, item) -> None:
        if isinstance(item, Scored):
            choice.score = item.logprobs
        elif isinstance(item, Token):
            choice.score = item.event.prompt_logprobs or choice.score
            choice.tokens.append(item.event.token_id)
            choice.logprobs.append(item.event.logprob)
            choice.tops.append(item.event.top_logprobs or [])
        elif isinstance(item, Finished):
            choice.completion = item.completion
            choice.finish_reason = item.completion.finish_reason if item.completion else "length"
        elif isinstance(item, Failed):
            raise ServeError(500, f"the engine failed on this request: {item.error}", type="server_error",
                             code="engine_error")
