"""The serving logic between the routes and the scheduler: requests checked and turned into jobs, the jobs'
items turned into OpenAI responses or server-sent-event chunks. Bad input is refused here, before the engine.

Tokenizer work (encoding prompts, decoding ids, building logprobs answers) runs on a small pool of worker
threads, never on the event loop, so `/health` and every stream go on while a large prompt is tokenized; text
longer than `max_prompt_chars` or not valid Unicode (a lone surrogate) is refused before any tokenizer sees it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prunex.errors import PrunexError
from prunex.runtime.classifier import Classifier
from prunex.runtime.generator import Completion as RunCompletion
from prunex.runtime.runtime import Runtime
from prunex.runtime.sampling import SamplingParams
from prunex.runtime.scoring import PromptLogprobs
from prunex.serve import protocol as p
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
class ServedModel:
    """What the server runs: a decoder runtime or an encoder classifier, under a name clients use."""

    name: str
    runtime: Runtime | None = None
    classifier: Classifier | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def context(self) -> int | None:
        if self.runtime is not None:
            return self.runtime.manifest.max_positions or None
        return self.classifier.manifest.max_length if self.classifier is not None else None


@dataclass
class _Choice:
    """What one job has produced so far."""

    prompt: list[int]
    score: PromptLogprobs | None = None  # the prompt's, with echo + logprobs
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    tops: list[list[tuple[int, float]]] = field(default_factory=list)
    completion: RunCompletion | None = None
    finish_reason: str | None = None


def _unsupported(condition: bool, param: str, what: str) -> None:
    if condition:
        raise ServeError(400, f"{param}: {what}", param=param, code="unsupported_parameter")


class Serving:
    """Completions, chat completions, tokenizer routes and classification over one served model."""

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

    # --- checks ------------------------------------------------------------------------------------------
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
        _unsupported(req.n not in (None, 1), "n", "only n=1 is supported (send the request again for more)")
        _unsupported(bool(req.frequency_penalty), "frequency_penalty", "only 0 is supported")
        _unsupported(bool(req.presence_penalty), "presence_penalty", "only 0 is supported")
        _unsupported(bool(req.logit_bias), "logit_bias", "not supported")

    def _submit(self, jobs: list[Job]) -> Ticket:
        try:
            return self.scheduler.submit(jobs, asyncio.get_running_loop())
        except QueueFull as err:
            raise ServeError(503, str(err), type="server_overloaded", code="queue_full",
                             headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        except NeverFits as err:
            raise ServeError(400, str(err), param="prompt", code="too_many_prompts") from None

    # --- jobs --------------------------------------------------------------------------------------------
    async def completion_jobs(self, req: p.CompletionRequest) -> tuple[list[Job], list[str]]:
        """One job per prompt (a string, strings, token ids, or lists of token ids), and the prompts' texts."""
        self._check_common(req)
        runtime = self._runtime()
        _unsupported(req.best_of not in (None, 1), "best_of", "only 1 is supported")
        _unsupported(req.suffix is not None, "suffix", "not supported")
        prompts = req.prompt if isinstance(req.prompt, list) and isinstance(req.prompt[0], (str, list)) else [
            req.prompt]
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        if max_tokens == 0 and not req.echo:
            raise ServeError(400, "max_tokens 0 needs echo: true (it scores the prompt without generating)",
                             param="max_tokens")
        scored = req.logprobs if req.echo else None  # the prompt's logprobs come with the echo
        params = self._params(req, max_tokens, req.logprobs, scored)
        for prompt in prompts:
            if isinstance(prompt, str):
                self.check_text(prompt, "prompt")
            else:
                self._check_prompt(prompt, max_tokens)  # before any decoding work

        def tokenized() -> list[tuple[list[int], str]]:
            return [(runtime.encode(x), x) if isinstance(x, str) else (x, runtime.tokenizer.decode(x))
                    for x in prompts]

        jobs, texts = [], []
        for index, (ids, text) in enumerate(await self.off_loop(tokenized)):
            self._check_prompt(ids, max_tokens)
            jobs.append(Job(index, list(ids), params, generate=max_tokens > 0))
            texts.append(text)
        return jobs, texts

    async def chat_job(self, req: p.ChatCompletionRequest) -> Job:
        self._check_common(req)
        runtime = self._runtime()
        _unsupported(bool(req.logprobs) or req.top_logprobs is not None, "logprobs",
                     "not supported for chat (use /v1/completions with logprobs)")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        self.check_text("".join(m["content"] for m in messages), "messages")
        try:
            ids = await self.off_loop(runtime.encode, messages)
        except PrunexError as err:
            raise ServeError(400, str(err), param="messages") from None
        except Exception as err:  # a chat template may raise anything (jinja's TemplateError, ...)
            raise ServeError(400, f"the chat template refused these messages: {err}", param="messages") from None
        max_tokens = req.max_completion_tokens or req.max_tokens
        if max_tokens is None:  # the rest of the context
            max_tokens = max((self.model.context or len(ids) + 256) - len(ids), 1)
        self._check_prompt(ids, max_tokens, param="messages")
        return Job(0, ids, self._params(req, max_tokens, None))

    # --- items -------------------------------------------------------------------------------------------
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

    def _usage(self, choices: list[_Choice]) -> p.Usage:
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
    def _record(choice: _Choice, item) -> None:
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

    def _logprobs(self, choice: _Choice, echo: bool, start: int, tokens_from: int = 0) -> p.CompletionLogprobs:
        """Legacy completion logprobs: the prompt's tokens first when echo (the first entry null), then the
        generated ones from `tokens_from`; text offsets count from `start`."""
        tokenizer = self._runtime().tokenizer
        ids, values, tops = [], [], []
        if echo and choice.score is not None:
            ids += choice.prompt
            values += [None, *choice.score.token_logprobs.tolist()]
            tops += [None, *choice.score.top_logprobs]
        ids += choice.tokens[tokens_from:]
        values += choice.logprobs[tokens_from:]
        tops += choice.tops[tokens_from:]
        strings = tokenizer.batch_decode([[i] for i in ids])
        alt_ids = sorted({i for top in tops if top for i, _ in top})
        alt_strings = dict(zip(alt_ids, tokenizer.batch_decode([[i] for i in alt_ids])))
        offsets, at = [], start
        for s in strings:
            offsets.append(at)
            at += len(s)
        top_dicts = [None if top is None else {alt_strings[i]: v for i, v in top} for top in tops]
        return p.CompletionLogprobs(text_offset=offsets, token_logprobs=values, tokens=strings,
                                    top_logprobs=top_dicts)

    # --- completions -------------------------------------------------------------------------------------
    async def completion(self, req: p.CompletionRequest, is_disconnected) -> p.Completion:
        jobs, texts = await self.completion_jobs(req)
        ticket = self._submit(jobs)
        choices = [_Choice(job.prompt) for job in jobs]
        async for item in self.items(ticket, is_disconnected):
            self._record(choices[item.index], item)
        return await self.off_loop(self._completion, req, choices, texts)  # logprobs decode every token

    def _completion(self, req: p.CompletionRequest, choices: list[_Choice], texts: list[str]) -> p.Completion:
        result = []
        for index, (choice, prompt_text) in enumerate(zip(choices, texts)):
            generated = choice.completion.text if choice.completion else ""
            logprobs = None
            if req.logprobs is not None:
                logprobs = self._logprobs(choice, bool(req.echo), 0 if req.echo else len(prompt_text))
            result.append(p.CompletionChoice(finish_reason=choice.finish_reason, index=index, logprobs=logprobs,
                                             text=(prompt_text if req.echo else "") + generated))
        return p.Completion(id=f"cmpl-{uuid.uuid4().hex}", choices=result, created=int(time.time()),
                            model=self.model.name, usage=self._usage(choices))

    async def completion_stream(self, req: p.CompletionRequest, is_disconnected) -> AsyncIterator[str]:
        """Checks and submits now (errors become the HTTP answer); returns the SSE data lines' iterator."""
        jobs, texts = await self.completion_jobs(req)
        ticket = self._submit(jobs)
        return self._completion_chunks(req, jobs, texts, ticket, is_disconnected)

    async def _completion_chunks(self, req, jobs, texts, ticket, is_disconnected) -> AsyncIterator[str]:
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        choices = [_Choice(job.prompt) for job in jobs]

        def chunk(index: int, text: str, finish: str | None, logprobs=None) -> str:
            choice = p.CompletionChoice(finish_reason=finish, index=index, logprobs=logprobs, text=text)
            return p.Completion(id=ident, choices=[choice], created=created, model=self.model.name).model_dump_json()

        if req.echo and req.logprobs is None:  # with logprobs, the echo comes with the prompt's scores
            for index, text in enumerate(texts):
                yield chunk(index, text, None)
        async for item in self.items(ticket, is_disconnected):
            choice = choices[item.index]
            try:
                self._record(choice, item)
            except ServeError as err:  # mid-stream: one data line with the error body, then the end
                yield json.dumps(err.body())
                return
            scored_now = isinstance(item, Scored) or (isinstance(item, Token) and item.event.prompt_logprobs)
            if scored_now and req.echo and req.logprobs is not None:
                prompt_only = await self.off_loop(self._logprobs, choice, True, 0, len(choice.tokens))
                yield chunk(item.index, texts[item.index], None, prompt_only)
            if isinstance(item, Token):
                logprobs = None
                if req.logprobs is not None:
                    start = len(texts[item.index]) if not req.echo else 0
                    logprobs = self._logprobs(choice, False, start, tokens_from=len(choice.tokens) - 1)
                if item.event.text or logprobs is not None:
                    yield chunk(item.index, item.event.text, None, logprobs)
            elif isinstance(item, Finished):
                yield chunk(item.index, "", choice.finish_reason)
        if req.stream_options and req.stream_options.include_usage:
            yield p.Completion(id=ident, choices=[], created=created, model=self.model.name,
                               usage=self._usage(choices)).model_dump_json()
        yield "[DONE]"

    # --- chat --------------------------------------------------------------------------------------------
    async def chat(self, req: p.ChatCompletionRequest, is_disconnected) -> p.ChatCompletion:
        job = await self.chat_job(req)
        ticket = self._submit([job])
        choice = _Choice(job.prompt)
        async for item in self.items(ticket, is_disconnected):
            self._record(choice, item)
        text = choice.completion.text if choice.completion else ""
        message = p.AssistantMessage(content=text)
        return p.ChatCompletion(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=self.model.name,
                                choices=[p.ChatChoice(finish_reason=choice.finish_reason, index=0, message=message)],
                                usage=self._usage([choice]))

    async def chat_stream(self, req: p.ChatCompletionRequest, is_disconnected) -> AsyncIterator[str]:
        job = await self.chat_job(req)
        ticket = self._submit([job])
        return self._chat_chunks(req, job, ticket, is_disconnected)

    async def _chat_chunks(self, req, job, ticket, is_disconnected) -> AsyncIterator[str]:
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        choice = _Choice(job.prompt)

        def chunk(delta: p.Delta, finish: str | None = None) -> str:
            return p.ChatCompletionChunk(id=ident, created=created, model=self.model.name, choices=[
                p.ChatChunkChoice(delta=delta, finish_reason=finish, index=0)]).model_dump_json()

        yield chunk(p.Delta(role="assistant", content=""))
        async for item in self.items(ticket, is_disconnected):
            try:
                self._record(choice, item)
            except ServeError as err:  # mid-stream: one data line with the error body, then the end
                yield json.dumps(err.body())
                return
            if isinstance(item, Token) and item.event.text:
                yield chunk(p.Delta(content=item.event.text))
            elif isinstance(item, Finished):
                yield chunk(p.Delta(), choice.finish_reason)
        if req.stream_options and req.stream_options.include_usage:
            yield p.ChatCompletionChunk(id=ident, choices=[], created=created, model=self.model.name,
                                        usage=self._usage([choice])).model_dump_json()
        yield "[DONE]"

    # --- tokenizer routes --------------------------------------------------------------------------------
    def _tokenizer(self):
        source = self.model.runtime or self.model.classifier
        return source.tokenizer

    async def tokenize(self, req: p.TokenizeRequest) -> p.TokenizeResponse:
        self.check_model(req.model, required=False)
        self.check_text(req.prompt, "prompt")
        tokenizer, special = self._tokenizer(), req.add_special_tokens is not False
        ids = (await self.off_loop(lambda: tokenizer(req.prompt, add_special_tokens=special)))["input_ids"]
        return p.TokenizeResponse(count=len(ids), max_model_len=self.model.context, tokens=ids)

    async def detokenize(self, req: p.DetokenizeRequest) -> p.DetokenizeResponse:
        self.check_model(req.model, required=False)
        tokenizer = self._tokenizer()
        if len(req.tokens) > self.max_prompt_chars:
            raise ServeError(400, f"tokens: {len(req.tokens)} ids is over this server's limit of "
                             f"{self.max_prompt_chars}", param="tokens", code="prompt_too_long")
        size = len(tokenizer)
        bad = next((t for t in req.tokens if t >= size), None)
        if bad is not None:
            raise ServeError(400, f"token id {bad} is outside the vocabulary (0..{size - 1})", param="tokens")
        return p.DetokenizeResponse(prompt=await self.off_loop(tokenizer.decode, req.tokens))

    def tokenizer_info(self) -> p.TokenizerInfo:
        t = self._tokenizer()
        template = getattr(t, "chat_template", None)
        return p.TokenizerInfo(eos_token=t.eos_token, bos_token=t.bos_token, pad_token=t.pad_token,
                               chat_template=template if isinstance(template, str) else None,
                               model_max_length=self.model.context, tokenizer_class=type(t).__name__)

    # --- classification ----------------------------------------------------------------------------------
    def classify(self, req: p.ClassifyRequest) -> p.ClassifyResponse:
        """Runs on a worker thread (the route's), one call at a time."""
        self.check_model(req.model, required=False)
        if self.model.classifier is None:
            raise ServeError(400, f"{self.model.name} is a decoder: /v1/classify needs an exported encoder "
                             "classifier (LTP)", code="wrong_model_kind")
        try:
            predictions = self.model.classifier.classify(list(req.input))
        except PrunexError as err:
            raise ServeError(400, str(err), param="input") from None
        data = [p.Classification(index=i, label=x.label, label_id=x.label_id, probabilities=x.probabilities,
                                 tokens=x.tokens, tokens_kept=x.tokens_kept_per_layer)
                for i, x in enumerate(predictions)]
        return p.ClassifyResponse(id=f"cls-{uuid.uuid4().hex}", created=int(time.time()), model=self.model.name,
                                  data=data)

