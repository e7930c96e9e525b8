"""The UI's side of an OpenAI-compatible endpoint: list its models, stream several at once.

`stream_all` sends one conversation per model, concurrently, and yields every
stream's state each time any of them moves, so the page redraws all columns
together. A model that fails or times out marks its own column; the others go on.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field, replace
from typing import AsyncIterator

from lamini_serve.errors import LaminiError

DEFAULT_ENDPOINT = "http://127.0.0.1:8000/v1"


@dataclass
class Endpoint:
    url: str = DEFAULT_ENDPOINT
    api_key: str | None = None
    timeout: float = 120.0  # seconds a stream may stay silent before its column says it timed out

    def client(self):
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.url, api_key=self.api_key or "none", max_retries=0,
                           timeout=self.timeout)


@dataclass
class ModelInfo:
    id: str
    role: str = "student"   # "teacher": the reference the students are compared with
    family: str = ""
    engine: str = ""

    @property
    def label(self) -> str:
        if self.role != "teacher":
            return self.id
        return f"{self.id} (reference)" if self.id == "teacher" else f"{self.id} (teacher, reference)"


def endpoint_problem(url: str, exc: BaseException) -> str:
    """One line that says why `url` did not answer and what to do."""
    import openai

    if isinstance(exc, openai.AuthenticationError) or getattr(exc, "status_code", None) in (401, 403):
        return (f"{url} refused the API key; set LAMINI_API_KEY (or the variable that --api-key-env names) "
                "to the key the server was started with")
    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError, OSError)):
        return (f"cannot reach {url}; start the server (`lamini serve embedded`, or `lamini ui --serve embedded` "
                "for both at once) or pass --endpoint")
    if isinstance(exc, openai.APIStatusError):
        return f"{url} answered {exc.status_code} to GET /models; is it an OpenAI-compatible endpoint?"
    return f"{url}: {type(exc).__name__}: {exc}"


def list_models(endpoint: Endpoint) -> list[ModelInfo]:
    """The endpoint's models, the teacher first; a LaminiError says why it could not tell."""
    from openai import OpenAI

    client = OpenAI(base_url=endpoint.url, api_key=endpoint.api_key or "none", max_retries=0, timeout=10)
    try:
        listed = list(client.models.list())
    except Exception as exc:  # noqa: BLE001: every failure becomes the banner's one line
        raise LaminiError(endpoint_problem(endpoint.url, exc)) from None
    finally:
        client.close()
    out = []
    for m in listed:
        extra = getattr(m, "model_extra", None) or {}
        out.append(ModelInfo(m.id, extra.get("role") or "student", extra.get("family") or "",
                             extra.get("engine") or ""))
    return sorted(out, key=lambda m: (m.role != "teacher", m.id))


@dataclass
class Sampling:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    repetition_penalty: float = 1.0  # vLLM's extension (lamini serve has it too): above 1 discourages repeats

    def request(self) -> dict:
        """The request's sampling fields, as stored with a vote."""
        out = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        if self.seed is not None:
            out["seed"] = int(self.seed)
        if self.repetition_penalty != 1.0:
            out["repetition_penalty"] = self.repetition_penalty
        return out

    def kwargs(self) -> dict:
        """The same, as openai client arguments (fields outside OpenAI's API go in extra_body)."""
        out = self.request()
        extra = {k: out.pop(k) for k in ("repetition_penalty",) if k in out}
        return {**out, "extra_body": extra} if extra else out


@dataclass
class StreamState:
    model: str
    text: str = ""
    started: float = field(default_factory=time.perf_counter)
    ttft: float | None = None
    total: float | None = None
    tokens: int = 0
    error: str | None = None
    done: bool = False

    def stats(self) -> str:
        if self.error:
            return f"**error**: {self.error}"
        if self.ttft is None:
            return "waiting for the first token..."
        elapsed = (self.total if self.total is not None else time.perf_counter() - self.started)
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        return (f"first token {self.ttft:.2f} s · total {elapsed:.2f} s · {self.tokens} tokens · "
                f"{rate:.1f} tokens/s" + ("" if self.done else " · streaming"))


def _error_text(exc: BaseException, timeout: float) -> str:
    import openai

    if isinstance(exc, (asyncio.TimeoutError, openai.APITimeoutError)):
        return f"no answer for {timeout:g} s; the model timed out"
    if isinstance(exc, openai.APIStatusError):
        from lamini_serve.teacher.client import status_error_message

        return f"{exc.status_code}: {status_error_message(exc)}"
    if isinstance(exc, openai.APIConnectionError):
        return "the connection to the endpoint broke"
    return f"{type(exc).__name__}: {exc}"


async def stream_one(client, state: StreamState, messages: list[dict], sampling: Sampling, changed: asyncio.Event,
                     timeout: float) -> None:
    """Stream one chat completion into `state`, setting `changed` at every step."""
    try:
        stream = await asyncio.wait_for(client.chat.completions.create(
            model=state.model, messages=messages, stream=True, stream_options={"include_usage": True},
            **sampling.kwargs()), timeout)
        it = stream.__aiter__()
        counted = 0
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(it.__anext__(), timeout)
                except StopAsyncIteration:
                    break
                if chunk.usage is not None:
                    state.tokens = chunk.usage.completion_tokens
                for choice in chunk.choices or ():
                    piece = choice.delta.content or ""
                    if piece:
                        if state.ttft is None:
                            state.ttft = time.perf_counter() - state.started
                        state.text += piece
                        counted += 1
                        state.tokens = max(state.tokens, counted)
                changed.set()
        finally:
            await stream.close()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001: the column shows it and the others go on
        state.error = _error_text(exc, timeout)
    finally:
        state.total = time.perf_counter() - state.started
        state.done = True
        changed.set()


async def stream_all(endpoint: Endpoint, conversations: dict[str, list[dict]], sampling: Sampling,
                     interval: float = 0.05) -> AsyncIterator[list[StreamState]]:
    """Stream every model's answer at once; yield all states whenever one moves (at most every `interval` s)."""
    client = endpoint.client()
    states = [StreamState(model) for model in conversations]
    changed = asyncio.Event()
    tasks = [asyncio.create_task(stream_one(client, s, conversations[s.model], sampling, changed, endpoint.timeout))
             for s in states]
    try:
        while True:
            await changed.wait()
            changed.clear()
            yield [replace(s) for s in states]  # a snapshot: the streams go on changing their own
            if all(s.done for s in states):
                break
            await asyncio.sleep(interval)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()


async def answer(endpoint: Endpoint, model: str, messages: list[dict], sampling: Sampling) -> str:
    """One whole answer (not streamed); a LaminiError says why there is none."""
    client = endpoint.client()
    try:
        out = await client.chat.completions.create(model=model, messages=messages, **sampling.kwargs())
        return out.choices[0].message.content or ""
    except Exception as exc:  # noqa: BLE001
        raise LaminiError(f"{model}: {_error_text(exc, endpoint.timeout)}") from None
    finally:
        await client.close()


def api_key_from(env_name: str | None) -> str | None:
    return os.environ.get(env_name or "LAMINI_API_KEY") or None
