"""An async client for any OpenAI-compatible endpoint (OpenAI, vLLM, lamini serve).

Built for millions of requests: bounded concurrency, requests-per-minute and
tokens-per-minute limits, retries with exponential backoff and full jitter on
429 / 5xx / timeouts / broken bodies, and `Retry-After` honoured. A refused key
(401/403) or an unknown model stops everything at once; a server that stays
unreachable after the retries stops everything too; anything else is one failed
request that the caller counts and goes on.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from lamini_serve.errors import LaminiError
from lamini_serve.generation import Completion


class TeacherFatal(LaminiError):
    """The whole run must stop: refused key, unknown model, server down."""


@dataclass
class Request:
    key: str
    kind: str  # "chat" (messages) or "completion" (prompt)
    payload: dict[str, Any]  # messages/prompt + sampling fields, as the API takes them


@dataclass
class Result:
    key: str
    completion: Completion | None = None
    error: str | None = None  # set when the request failed for good
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None and self.completion is not None


@dataclass
class ClientConfig:
    base_url: str
    model: str
    api_key: str | None = None
    concurrency: int = 64
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_retries: int = 6
    timeout: float = 120.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    extra_headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise LaminiError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.max_retries < 0:
            raise LaminiError(f"max_retries must be >= 0, got {self.max_retries}")
        if not self.timeout > 0:  # aiohttp reads 0 as "no timeout": a stalled teacher would hang the run
            raise LaminiError(f"timeout must be positive (seconds), got {self.timeout}")
        for name in ("requests_per_minute", "tokens_per_minute"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise LaminiError(f"{name} must be positive, got {v}")
        if not self.base_url.startswith(("http://", "https://")):
            raise LaminiError(f"--teacher-url {self.base_url!r} needs a scheme, e.g. http://{self.base_url}")
        self.base_url = self.base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"


class RateLimiter:
    """A token bucket refilled continuously: `per_minute` units a minute, bursts of 5 seconds' worth.

    (A whole minute's burst at start trips servers that also count per second.)
    `clock` and `sleep` are injectable so that tests can pace it without waiting.
    """

    def __init__(self, per_minute: float, burst_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.clock, self.sleep = clock, sleep
        self.stamp = clock()
        self.lock = asyncio.Lock()

    async def take(self, amount: float = 1.0) -> float:
        """Wait until `amount` may be spent; returns what was charged."""
        amount = min(amount, self.capacity)  # a request bigger than a burst waits for a full bucket
        async with self.lock:
            while True:
                now = self.clock()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                # (With a tolerance: float dust would ask for a sleep too short to move the clock.)
                if self.level >= amount - 1e-9:
                    self.level = max(0.0, self.level - amount)
                    return amount
                await self.sleep((amount - self.level) / self.rate)

    def refund(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


class _Retry(Exception):
    def __init__(self, why: str, wait: float | None = None, down: bool = False):
        super().__init__(why)
        self.why, self.wait, self.down = why, wait, down


def estimate_tokens(payload: dict[str, Any]) -> int:
    """A cheap upper-side guess of a request's tokens (4 characters a token) for the TPM limit."""
    if "messages" in payload:
        chars = sum(len(m.get("content", "")) for m in payload["messages"])
    else:
        chars = len(payload.get("prompt", ""))
    return chars // 4 + int(payload.get("max_tokens") or 256)


def error_message(body: str, limit: int = 300) -> str:
    """The server's own words from an error body: OpenAI's error.message, vLLM's message,
    FastAPI's detail, else the raw text; on one line, so that it fits a one-line error."""
    said: Any = None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        said = err.get("message") if isinstance(err, dict) else err
        said = said or data.get("message") or data.get("detail")
    text = " ".join(str(said if said else body).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def status_error_message(exc) -> str:
    """`error_message` of an openai client's APIStatusError: the body the server sent, else the client's words."""
    text = exc.response.text
    return error_message(text) if text else exc.message


def _retry_after(headers) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        try:
            return float(headers.get("retry-after-ms")) / 1000
        except (TypeError, ValueError):
            return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class OpenAIClient:
    """Sends Requests to an OpenAI-compatible server; use as `async with`."""

    def __init__(self, config: ClientConfig, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep):
        self.config = config
        self.semaphore = asyncio.Semaphore(config.concurrency)
        rpm, tpm = config.requests_per_minute, config.tokens_per_minute
        self.rpm = RateLimiter(rpm, clock=clock, sleep=sleep) if rpm else None
        self.tpm = RateLimiter(tpm, clock=clock, sleep=sleep) if tpm else None
        self.retries = 0  # total retries, for progress displays
        self.fatal: TeacherFatal | None = None  # once set, nothing more is sent
        self._client = None

    async def __aenter__(self) -> "OpenAIClient":
        import aiohttp

        headers = {"Content-Type": "application/json", **self.config.extra_headers}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        self._client = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(limit=self.config.concurrency),
            timeout=aiohttp.ClientTimeout(total=self.config.timeout, connect=min(10.0, self.config.timeout)),
        )
        return self

    async def __aexit__(self, *exc) -> None:
        await self._client.close()

    async def send(self, req: Request) -> Result:
        """One request with limits and retries. Raises TeacherFatal when the run must stop."""
        async with self.semaphore:
            attempt = 0
            while True:
                attempt += 1
                if self.fatal is not None:
                    raise self.fatal
                try:
                    res = await self._once(req)
                    res.attempts = attempt
                    return res
                except TeacherFatal as exc:
                    self.fatal = exc
                    raise
                except _Retry as r:
                    if attempt > self.config.max_retries:
                        if r.down:
                            self.fatal = TeacherFatal(
                                f"the teacher at {self.config.base_url} is unreachable ({r.why}) after "
                                f"{self.config.max_retries} retries; start it or fix --teacher-url, then rerun "
                                f"the same command: finished rows are kept"
                            )
                            raise self.fatal from None
                        return Result(req.key, error=f"{r.why} (after {self.config.max_retries} retries)",
                                      attempts=attempt)
                    self.retries += 1
                    delay = random.uniform(0, min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1)))
                    if r.wait is not None:
                        delay = max(delay, r.wait)
                    await asyncio.sleep(delay)

    async def _once(self, req: Request) -> Result:
        import aiohttp

        body = {"model": self.config.model, **req.payload}
        est = estimate_tokens(req.payload)
        if self.rpm:
            await self.rpm.take(1)
        charged = await self.tpm.take(est) if self.tpm else 0.0
        url = self.config.base_url + ("/chat/completions" if req.kind == "chat" else "/completions")
        try:
            async with self._client.post(url, data=json.dumps(body)) as resp:
                status, headers = resp.status, resp.headers
                raw = await resp.read()
        except aiohttp.ClientConnectorError as exc:
            raise _Retry(f"cannot connect: {exc.os_error or exc}", down=True) from None
        except asyncio.TimeoutError:
            raise _Retry(f"no answer within {self.config.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise _Retry(f"connection broken: {type(exc).__name__}") from None
        text_body = raw.decode("utf-8", "replace")
        if status in (401, 403):
            raise TeacherFatal(
                f"the teacher at {self.config.base_url} refused the API key (HTTP {status}); "
                f"set the right key in the environment variable given by --api-key-env"
            )
        if status == 404:
            raise TeacherFatal(
                f"the teacher at {self.config.base_url} answered 404 for model {self.config.model!r} "
                f"({text_body[:120].strip()}); check --teacher-model and --teacher-url"
            )
        if status == 429 or status >= 500 or status == 408:
            raise _Retry(f"HTTP {status}: {error_message(text_body)}", wait=_retry_after(headers))
        if status >= 400:
            return Result(req.key, error=f"HTTP {status}: {error_message(text_body)}")
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            text = choice["message"]["content"] if req.kind == "chat" else choice["text"]
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retry("malformed response body") from None
        if self.tpm:  # settle the charge against what was really used (never refund more than was charged)
            used = int(usage.get("total_tokens") or est)
            if used < charged:
                self.tpm.refund(charged - used)
        if not isinstance(text, str):
            return Result(req.key, error="no text in the response")
        return Result(req.key, Completion(text, int(usage.get("prompt_tokens") or 0),
                                          int(usage.get("completion_tokens") or 0), choice.get("finish_reason")))
