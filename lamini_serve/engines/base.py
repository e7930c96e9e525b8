"""The interface every serving engine shares: a request goes in, deltas come out.

`Request` is what the server hands an engine (token ids, not text: the server
renders prompts through `ModelSpec` once, for every engine). What comes back is a
stream of `Delta`s: new token ids, their text, their log-probabilities when asked;
the last one carries `finish_reason` and `usage`.

In-process engines (torch, onnx) are a `StepModel` (the model's forward pass over
a batch of rows with their key/value caches) under one `BatchScheduler`, which does
everything else once for all of them: sampling with a random generator per request,
detokenizing, stop strings, the finish-reason rule, cancellation and the queue.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from lamini_serve.generation import SamplingParams


@dataclass
class Request:
    """One sequence to generate (the server turns `n` into n requests)."""

    id: str
    prompt_ids: list[int]
    params: SamplingParams
    logprobs: int | None = None  # None: no log-probabilities; k >= 0: the chosen token's and the top k
    strip: bool = False  # chat answers: leading/trailing whitespace dropped, as `lamini chat` shows them
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class TokenLogprob:
    token_id: int
    token: str  # the token's own text
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (id, text, logprob), best first


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Delta:
    """What one decode step added to a request. The text pieces of a request's deltas
    join to its whole answer; the last delta has finish_reason and usage set."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" (client went away)
    usage: Usage | None = None


class StepModel(Protocol):
    """A model's batched forward pass with per-row key/value caches (numpy logits out).

    Rows are kept in the order they were added; `keep` drops rows (finished or
    cancelled) and keeps the others' order.
    """

    vocab_size: int
    context_length: int  # prompt + new tokens may not exceed this
    joins_running_batch: bool  # True: `add` works while rows are decoding (continuous batching)

    def add(self, prompts: Sequence[Sequence[int]]) -> Any:
        """Prefill new rows (appended after the running ones); float32 logits [len(prompts), vocab]
        for each new row's first token."""

    def step(self, tokens: Sequence[int]) -> Any:
        """Feed one token per running row (in row order); float32 logits [rows, vocab]."""

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only these row indices (ascending), dropping the rest and their caches."""

    def score(self, ids: Sequence[int]) -> Any:
        """Teacher forcing over a whole sequence, outside any batch: float32 logits
        [len(ids) - 1, vocab], row i predicting ids[i + 1] (decoder-only models only)."""


# ---- what an engine raises; the server turns each into its OpenAI-shaped status ----
class EngineError(Exception):
    """Base of the errors below: `status` is the HTTP status the server answers with."""

    status = 500
    type = "server_error"

    def __init__(self, message: str, retry_after: float | None = None, param: str | None = None):
        super().__init__(message)
        self.retry_after, self.param = retry_after, param


class InvalidRequest(EngineError):
    """The request cannot be served as asked (a prompt longer than the context, say): 400."""

    status, type = 400, "invalid_request_error"


class QueueFull(EngineError):
    """Too many requests are waiting for this model: 429 with Retry-After."""

    status, type = 429, "rate_limit_error"


class Unavailable(EngineError):
    """The model is loading, restarting or gone: 503 with Retry-After."""

    status, type = 503, "service_unavailable"
