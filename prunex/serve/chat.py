"""`POST /v1/chat/completions`: messages through the tokenizer's chat template, streamed or whole."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from prunex.errors import PrunexError
from prunex.serve import protocol as p
from prunex.serve.base import Choice, ServeError, ServingBase, unsupported
from prunex.serve.scheduler import Finished, Job, Token


class ChatRoutes(ServingBase):
    async def chat_job(self, req: p.ChatCompletionRequest) -> Job:
        self._check_common(req)
        runtime = self._runtime()
        unsupported(bool(req.logprobs) or req.top_logprobs is not None, "logprobs",
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

    async def chat(self, req: p.ChatCompletionRequest, is_disconnected) -> p.ChatCompletion:
        job = await self.chat_job(req)
        ticket = self._submit([job])
        choice = Choice(job.prompt)
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
        choice = Choice(job.prompt)

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
