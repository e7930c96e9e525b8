"""The OpenAI request and response bodies `lamini serve` speaks (pydantic v2).

Requests follow OpenAI's `/v1/chat/completions` and `/v1/completions`, plus the
sampling extras vLLM accepts (`top_k`, `repetition_penalty`, `ignore_eos`,
`min_tokens`). Fields the server does not know are ignored, as OpenAI's SDK and
vLLM clients send many. Every bound here is also in /openapi.json; bounds that
depend on the server (`n`, `max_tokens`, the model's context) are checked when the
request is served. A body that does not validate is a 400 in OpenAI's error shape
naming the field, never FastAPI's 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_LOGPROBS = 20
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: Optional[str] = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(_Body):
    model: str = Field(description="A served model's name (see GET /v1/models).")
    max_tokens: Optional[int] = Field(
        None, ge=0, description="Tokens to generate at most. Default: what the context leaves, capped by the "
                                "server's --max-tokens. 0 only with echo (completions): the prompt alone.")
    temperature: Optional[float] = Field(None, ge=0, le=2, description="0 is greedy. Default 1.")
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=-1, description="(extra) -1 or 0: off.")
    stop: Optional[Union[str, Annotated[list[str], Field(max_length=4)]]] = Field(None, description="Up to 4 stop strings.")
    n: Optional[int] = Field(None, ge=1, description="Choices per prompt (at most the server's --max-n).")
    seed: Optional[int] = Field(None, ge=INT64_MIN, le=INT64_MAX,
                                description="Same seed and settings, same texts (choice i gets a seed derived from it).")
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    repetition_penalty: Optional[float] = Field(None, gt=0, description="(extra) above 1 discourages repeats. Default 1.")
    ignore_eos: Optional[bool] = Field(None, description="(extra, vLLM's) always generate max_tokens tokens.")
    min_tokens: Optional[int] = Field(None, ge=0, description="(extra) 0, or max_tokens together with ignore_eos.")
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1, description="The newer name of max_tokens.")
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[Annotated[int, Field(ge=0)]], list[list[Annotated[int, Field(ge=0)]]]] = Field(
        description="A string, a list of strings, a list of token ids, or a list of lists of token ids.")
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: Optional[bool] = False


# ---- responses (documented in /openapi.json) --------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChatLogprobs(BaseModel):
    content: Optional[list[ChatTokenLogprob]] = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: Optional[ChatLogprobs] = None
    finish_reason: Optional[str] = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Optional[Usage] = None


class ChatDelta(BaseModel):
    role: Optional[str] = None
    content: Optional[str] = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: Optional[ChatLogprobs] = None
    finish_reason: Optional[str] = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a streamed chat completion (text/event-stream, ended by `data: [DONE]`)."""
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Optional[Usage] = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[Optional[float]]
    top_logprobs: list[Optional[dict[str, float]]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[str] = None


class Completion(BaseModel):
    """The non-streamed answer; a streamed one sends the same shape per `data:` event."""
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lamini"
    engine: str = Field(description="vllm, onnx or torch")
    family: Optional[str] = Field(None, description="causal or seq2seq")
    prompt_format: Optional[str] = Field(None, description="raw, alpaca or chat")
    role: str = Field(description="teacher or student")
    max_model_len: Optional[int] = None
    state: Optional[str] = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[Any] = None


class ErrorResponse(BaseModel):
    error: ErrorBody
