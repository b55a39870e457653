"""`POST /v1/completions`: prompts as text, texts, ids or lists of ids; `echo` + `logprobs` score the prompt
(what lm-evaluation-harness sends); streamed as server-sent events or answered whole."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from prunex.serve import protocol as p
from prunex.serve.base import Choice, ServeError, ServingBase, unsupported
from prunex.serve.scheduler import Finished, Job, Scored, Token


class CompletionRoutes(ServingBase):
    async def completion_jobs(self, req: p.CompletionRequest) -> tuple[list[Job], list[str]]:
        """One job per prompt (a string, strings, token ids, or lists of token ids), and the prompts' texts."""
        self._check_common(req)
        runtime = self._runtime()
        unsupported(req.best_of not in (None, 1), "best_of", "only 1 is supported")
        unsupported(req.suffix is not None, "suffix", "not supported")
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

    def _logprobs(self, choice: Choice, echo: bool, start: int, tokens_from: int = 0) -> p.CompletionLogprobs:
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

    async def completion(self, req: p.CompletionRequest, is_disconnected) -> p.Completion:
        jobs, texts = await self.completion_jobs(req)
        ticket = self._submit(jobs)
        choices = [Choice(job.prompt) for job in jobs]
        async for item in self.items(ticket, is_disconnected):
            self._record(choices[item.index], item)
        return await self.off_loop(self._completion, req, choices, texts)  # logprobs decode every token

    def _completion(self, req: p.CompletionRequest, choices: list[Choice], texts: list[str]) -> p.Completion:
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
        choices = [Choice(job.prompt) for job in jobs]

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
