"""`POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info`: the shapes lm-evaluation-harness reads for a
remote tokenizer; the work runs on the tokenizer threads."""

from __future__ import annotations

from prunex.serve import protocol as p
from prunex.serve.base import ServeError, ServingBase


class TokenizerRoutes(ServingBase):
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
