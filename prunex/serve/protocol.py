"""The HTTP protocol of `prunex serve`: pydantic models in OpenAI's shapes and field order.

Requests forbid unknown fields, as OpenAI does, and are strict: an integer field takes only a JSON integer and
a boolean only true / false (`14622.0` or `true` as a token id is a 400, not a silent conversion). Fields
OpenAI has and prunex does not implement are accepted only at their neutral value (a clear 400 otherwise, from
the serving code). prunex's own fields and routes carry `x-prunex-extension: true` in the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

EXTENSION = {"x-prunex-extension": True}


def extension(description: str, **kw):
    """A field that OpenAI's API does not have: described and marked in the OpenAPI document."""
    return Field(description=f"prunex extension: {description}", json_schema_extra=EXTENSION, **kw)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# --- errors -----------------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[Union[str, int]] = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- shared pieces ----------------------------------------------------------------------------------------
class StreamOptions(Request):
    include_usage: Optional[bool] = None


class PruningStats(BaseModel):
    """The K/V cache the request's rows held when they finished, against a dense cache for the same tokens."""

    model_config = ConfigDict(json_schema_extra=EXTENSION)

    kv_kept_fraction: float
    kv_bytes: int
    dense_kv_bytes: int


class Usage(BaseModel):
    completion_tokens: int
    prompt_tokens: int
    total_tokens: int
    prunex: Optional[PruningStats] = extension("the pruned K/V cache of the request", default=None)


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
Stop = Optional[Union[str, Annotated[list[str], Field(max_length=4)]]]


# --- /v1/completions --------------------------------------------------------------------------------------
class CompletionRequest(Request):
    model: str
    prompt: Union[str, Annotated[list[str], Field(min_length=1)], TokenIds,
                  Annotated[list[TokenIds], Field(min_length=1)]]
    best_of: Optional[int] = Field(None, description="Only 1 (or unset) is supported.")
    echo: Optional[bool] = Field(False, description="Return the prompt too (with logprobs: the prompt tokens' "
                                 "log-probabilities, the first null), scored through the pruned graph.")
    frequency_penalty: Optional[float] = Field(0, description="Only 0 is supported.")
    logit_bias: Optional[dict[str, float]] = Field(None, description="Not supported (leave unset).")
    logprobs: Optional[Annotated[int, Field(ge=0, le=5)]] = None
    max_tokens: Optional[Annotated[int, Field(ge=0)]] = Field(16, description="0 with echo: score the prompt only.")
    n: Optional[int] = Field(1, description="Only 1 is supported.")
    presence_penalty: Optional[float] = Field(0, description="Only 0 is supported.")
    seed: Optional[int] = None
    stop: Stop = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    suffix: Optional[str] = Field(None, description="Not supported (leave unset).")
    temperature: Optional[Annotated[float, Field(ge=0, le=2)]] = 1.0
    top_p: Optional[Annotated[float, Field(gt=0, le=1)]] = 1.0
    user: Optional[str] = None
    top_k: Optional[Annotated[int, Field(ge=0)]] = extension("sample among the k most likely tokens (0: all)",
                                                             default=0)
    ignore_eos: Optional[bool] = extension("keep generating past the end-of-sequence token", default=False)


class CompletionLogprobs(BaseModel):
    text_offset: list[int]
    token_logprobs: list[Optional[float]]
    tokens: list[str]
    top_logprobs: list[Optional[dict[str, float]]]


class CompletionChoice(BaseModel):
    finish_reason: Optional[Literal["stop", "length"]]
    index: int
    logprobs: Optional[CompletionLogprobs] = None
    text: str


class Completion(BaseModel):
    id: str
    choices: list[CompletionChoice]
    created: int
    model: str
    object: Literal["text_completion"] = "text_completion"
    system_fingerprint: Optional[str] = None
    usage: Optional[Usage] = None


# --- /v1/chat/completions ---------------------------------------------------------------------------------
class TextPart(Request):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: Optional[str] = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(Request):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    model: str
    frequency_penalty: Optional[float] = Field(0, description="Only 0 is supported.")
    logit_bias: Optional[dict[str, float]] = Field(None, description="Not supported (leave unset).")
    logprobs: Optional[bool] = Field(False, description="Not supported for chat (use /v1/completions).")
    max_completion_tokens: Optional[Annotated[int, Field(ge=1)]] = None
    max_tokens: Optional[Annotated[int, Field(ge=1)]] = None
    n: Optional[int] = Field(1, description="Only 1 is supported.")
    presence_penalty: Optional[float] = Field(0, description="Only 0 is supported.")
    seed: Optional[int] = None
    stop: Stop = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    temperature: Optional[Annotated[float, Field(ge=0, le=2)]] = 1.0
    top_logprobs: Optional[int] = Field(None, description="Not supported (leave unset).")
    top_p: Optional[Annotated[float, Field(gt=0, le=1)]] = 1.0
    user: Optional[str] = None
    top_k: Optional[Annotated[int, Field(ge=0)]] = extension("sample among the k most likely tokens (0: all)",
                                                             default=0)
    ignore_eos: Optional[bool] = extension("keep generating past the end-of-sequence token", default=False)


class AssistantMessage(BaseModel):
    content: Optional[str]
    role: Literal["assistant"] = "assistant"


class ChatChoice(BaseModel):
    finish_reason: Optional[Literal["stop", "length"]]
    index: int
    logprobs: None = None
    message: AssistantMessage


class ChatCompletion(BaseModel):
    id: str
    choices: list[ChatChoice]
    created: int
    model: str
    object: Literal["chat.completion"] = "chat.completion"
    system_fingerprint: Optional[str] = None
    usage: Optional[Usage] = None


class Delta(BaseModel):
    content: Optional[str] = None
    role: Optional[Literal["assistant"]] = None


class ChatChunkChoice(BaseModel):
    delta: Delta
    finish_reason: Optional[Literal["stop", "length"]] = None
    index: int
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    choices: list[ChatChunkChoice]
    created: int
    model: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    system_fingerprint: Optional[str] = None
    usage: Optional[Usage] = None


# --- /v1/models -------------------------------------------------------------------------------------------
class Model(BaseModel):
    id: str
    created: int
    object: Literal["model"] = "model"
    owned_by: str = "prunex"
    max_model_len: Optional[int] = extension("the model's context in tokens", default=None)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


# --- tokenizer routes (the shapes lm-evaluation-harness reads for a remote tokenizer) --------------------
class TokenizeRequest(Request):
    model: Optional[str] = None
    prompt: str
    add_special_tokens: Optional[bool] = True


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: Optional[int]
    tokens: list[int]


class DetokenizeRequest(Request):
    model: Optional[str] = None
    tokens: list[Annotated[int, Field(ge=0)]]


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    eos_token: Optional[str]
    bos_token: Optional[str]
    pad_token: Optional[str]
    chat_template: Optional[str]
    model_max_length: Optional[int]
    tokenizer_class: str


# --- /health ----------------------------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok"] = "ok"


class LoadingError(BaseModel):
    code: int
    message: str
    type: str


class Loading(BaseModel):
    error: LoadingError


# --- /v1/classify (prunex's own route, for exported LTP encoders) -----------------------------------------
class ClassifyRequest(Request):
    model: Optional[str] = None
    input: Annotated[list[str], Field(min_length=1)]


class Classification(BaseModel):
    index: int
    label: str
    label_id: int
    probabilities: list[float]
    tokens: int
    tokens_kept: list[int] = Field(description="tokens left after each layer (LTP removes the rest)")


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra=EXTENSION)

    id: str
    object: Literal["classification"] = "classification"
    created: int
    model: str
    data: list[Classification]
