"""The OpenAI-compatible HTTP face of `lamini serve`: one app, many models.

    app = create_app({"teacher": engine, "t5-small": engine2}, api_key="...")

Routes: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions,
GET /metrics (Prometheus), and FastAPI's /docs and /openapi.json.

In-process engines (torch, onnx) get one engine `Request` per choice; their deltas
are sent as they come (SSE) or joined (one JSON answer), the same deltas either way,
so a streamed answer equals the non-streamed one by construction. vLLM engines get
the body as sent and their bytes are passed straight back.

Security: with an API key every route but /health, /docs, /redoc and /openapi.json
(the public shape of the API, no model data) needs `Authorization: Bearer KEY`
(compared in constant time); /metrics needs it too. Bodies over
`Limits.max_body_bytes` are refused with 413 before they are parsed. No CORS
headers unless origins are given.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lamini_serve.engines.base import EngineError, InvalidRequest
from lamini_serve.engines.base import Request as EngineRequest
from lamini_serve.errors import LaminiError
from lamini_serve.serve import schemas as S
from lamini_serve.serve.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("lamini_serve.serve")

OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
LOGPROB_FLOOR = -9999.0  # what a -inf log-probability is sent as (JSON has no infinity), as vLLM does


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20  # 413 above
    max_n: int = 8  # choices per prompt
    max_tokens: int = 4096  # per choice
    max_prompts: int = 256  # prompts in one /v1/completions request


# ---- errors in OpenAI's shape -----------------------------------------------------------------
def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: Any = None, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status, headers=dict(headers or {}))


def _engine_error(exc: EngineError) -> JSONResponse:
    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))} if exc.retry_after else None
    return error_response(exc.status, str(exc), exc.type, exc.param, getattr(exc, "code", None), headers)


class BadRequest(InvalidRequest):
    pass


def _bad(message: str, param: str | None = None) -> BadRequest:
    return BadRequest(message, param=param)


def _param_of(loc: Sequence[Any]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body",)]
    # pydantic adds the union member tried ("str", "list[int]"...) and the model names: drop them
    parts = [p for p in parts if not any(c in p for c in "[]") and p not in ("str", "int", "function-after")]
    return ".".join(parts) or None


# ---- the guard: API key and body size, before anything is parsed -------------------------------
class Guard:
    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.max_body = app, max_body_bytes
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        if self.key is not None and scope["method"] != "OPTIONS" and scope["path"] not in OPEN_PATHS:
            given = headers.get("authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                what = "no API key was given" if not given else "the API key is not valid"
                resp = error_response(401, f"{what}: send `Authorization: Bearer KEY` with the server's --api-key "
                                           "(LAMINI_API_KEY)", code="invalid_api_key",
                                      headers={"WWW-Authenticate": "Bearer"})
                return await resp(scope, receive, send)
        if scope["method"] in ("POST", "PUT", "PATCH"):
            too_big = error_response(413, f"the request body is larger than this server's limit of "
                                          f"{self.max_body} bytes", code="request_too_large")
            try:
                declared = int(headers.get("content-length", b"0") or 0)
            except ValueError:
                declared = 0
            if declared > self.max_body:
                return await too_big(scope, receive, send)
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client left before sending its body
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.max_body:
                    return await too_big(scope, receive, send)
                if not message.get("more_body"):
                    break
            body, sent = b"".join(chunks), False

            async def replay():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await self.app(scope, replay, send)
        return await self.app(scope, receive, send)


# ---- server-sent events that stop the engine when the client leaves ------------------------------
class EventStream(StreamingResponse):
    """Streams `body` (an async iterator of bytes); a client that disconnects cancels it,
    and the iterator is always closed (which cancels the engine's rows)."""

    def __init__(self, body: AsyncIterator[bytes], status_code: int = 200, media_type: str = "text/event-stream",
                 headers: Mapping[str, str] | None = None):
        super().__init__(body, status_code, dict(headers or {}), media_type)
        if media_type.startswith("text/event-stream"):
            self.headers["Cache-Control"] = "no-cache"
            self.headers["X-Accel-Buffering"] = "no"

    async def __call__(self, scope, receive, send):
        async def stream():
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass

        streamer, watcher = asyncio.ensure_future(stream()), asyncio.ensure_future(watch())
        try:
            await asyncio.wait({streamer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streamer, watcher):
                task.cancel()
            results = await asyncio.gather(streamer, watcher, return_exceptions=True)
            await self.body_iterator.aclose()
        exc = results[0]
        if isinstance(exc, BaseException) and not isinstance(exc, (asyncio.CancelledError, OSError)):
            log.error("a stream failed", exc_info=exc)


def _relayed(engine) -> bool:
    """Whether `engine` is another HTTP server the gateway relays to (vllm, remote)."""
    return getattr(engine, "relayed", False)


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


# ---- choices: n engine requests, their deltas merged ----------------------------------------------
class Fanout:
    """Runs one engine request per choice; (index, Delta | error) items arrive on one queue."""

    def __init__(self, engine, requests: Sequence[EngineRequest]):
        self.requests = list(requests)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.gens = [engine.generate(r) for r in self.requests]
        self.tasks = [asyncio.ensure_future(self._pump(i, g)) for i, g in enumerate(self.gens)]
        self.pending: list[tuple[int, Any]] = []

    async def _pump(self, i: int, gen) -> None:
        try:
            async for delta in gen:
                self.queue.put_nowait((i, delta))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # QueueFull, InvalidRequest, a failed step: the consumer raises it
            self.queue.put_nowait((i, exc))
        finally:
            await gen.aclose()

    async def started(self) -> None:
        """Wait for every choice's first delta: an error before any text (a full queue, a prompt
        too long) becomes the whole request's error status instead of a broken stream."""
        seen: set[int] = set()
        try:
            while len(seen) < len(self.tasks):
                i, item = await self.queue.get()
                if isinstance(item, BaseException):
                    raise item
                self.pending.append((i, item))
                seen.add(i)
        except BaseException:
            await self.close()
            raise

    async def items(self) -> AsyncIterator[tuple[int, Any]]:
        """Every (index, delta) until each choice has finished; raises a choice's error."""
        open_ = set(range(len(self.tasks)))
        while open_:
            i, item = self.pending.pop(0) if self.pending else await self.queue.get()
            if isinstance(item, BaseException):
                raise item
            if item.finish_reason is not None:
                open_.discard(i)
            yield i, item

    async def close(self) -> None:
        for r in self.requests:
            r.cancelled.set()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def choice_seed(seed: int | None, i: int) -> int | None:
    """Choice 0 uses the seed itself; choice i > 0 one derived from (seed, i)."""
    if seed is None:
        return None
    if i == 0:
        return seed % 2**64
    return int.from_bytes(hashlib.sha256(f"lamini:{seed}:{i}".encode()).digest()[:8], "little")


def _lp(x: float | None) -> float | None:
    if x is None:
        return None
    return x if math.isfinite(x) else LOGPROB_FLOOR


@dataclass
class _Choice:
    index: int
    prompt: int  # which prompt it answers
    texts: list[str] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)  # engine TokenLogprobs (None: echoed first token)
    finish_reason: str | None = None
    completion_tokens: int = 0
    offset: int = 0  # completions text_offset so far
    last: float | None = None


# ---- the app ---------------------------------------------------------------------------------
def create_app(models: Mapping[str, Any], *, api_key: str | None = None, limits: Limits | None = None,
               cors_origins: Sequence[str] = (), roles: Mapping[str, str] | None = None,
               title: str = "lamini-serve") -> FastAPI:
    """An app serving `models` ({served name: engine}); see the module docstring."""
    from lamini_serve import __version__

    limits = limits or Limits()
    models = dict(models)
    roles = dict(roles or {})
    metrics = Metrics(lambda: models)
    started_at = int(time.time())
    app = FastAPI(title=title, version=__version__,
                  description="OpenAI-compatible endpoint for a distilled herd (teacher and students).")
    app.state.models, app.state.metrics, app.state.limits = models, metrics, limits

    # ---- errors ---------------------------------------------------------------------------
    async def _count(request: Request, status: int) -> None:
        """lamini:requests_total for a refused request, when it names a served model."""
        if request.method != "POST":
            return
        try:
            model = (await request.json()).get("model")
        except Exception:
            return
        if isinstance(model, str) and model in models:
            metrics.request_done(model, status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        await _count(request, 400)
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = _param_of(first.get("loc", ()))
        if first.get("type") == "json_invalid":
            return error_response(400, "the body is not valid JSON", param=None)
        msg = first.get("msg", "invalid request")
        where = f"{param}: " if param else ""
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        return error_response(400, f"{where}{msg}{more}", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(exc.status_code, str(exc.detail), kind, headers=getattr(exc, "headers", None))

    @app.exception_handler(EngineError)
    async def _engine(request: Request, exc: EngineError):
        if exc.status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        await _count(request, exc.status)
        return _engine_error(exc)

    @app.exception_handler(LaminiError)
    async def _lamini(request: Request, exc: LaminiError):
        await _count(request, 400)
        return error_response(400, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        await _count(request, 500)
        return error_response(500, f"the server failed on this request ({type(exc).__name__}); see its log",
                              "server_error")

    # ---- routes ---------------------------------------------------------------------------
    err_docs = {s: {"model": S.ErrorResponse} for s in (400, 401, 404, 413, 429, 503)}

    @app.get("/health", responses={503: {"description": "A model is still loading (Retry-After set)."}})
    async def health():
        states = {name: getattr(engine, "state", "ready") for name, engine in models.items()}
        waiting = [name for name, s in states.items() if s != "ready"]
        if not waiting:
            return {"status": "ok", "models": states}
        loading = [n for n in waiting if states[n] in ("loading", "restarting")]
        return JSONResponse({"status": "loading" if loading else "unavailable", "not_ready": waiting, "models": states},
                            status_code=503, headers={"Retry-After": "5"})

    @app.get("/v1/models", response_model=S.ModelList, responses={401: err_docs[401]})
    async def list_models():
        return {"object": "list", "data": [_card(name, engine) for name, engine in models.items()]}

    def _card(name: str, engine) -> dict:
        spec = getattr(engine, "spec", None)
        family = getattr(getattr(spec, "family", None), "value", None)
        fmt = getattr(getattr(spec, "prompt_format", None), "value", None)
        length = getattr(engine, "max_model_len" if _relayed(engine) else "context_length", None)
        return {"id": name, "object": "model", "created": started_at, "owned_by": "lamini", "engine": engine.kind,
                "family": family, "prompt_format": fmt, "role": roles.get(name, "teacher" if name == "teacher" else "student"),
                "max_model_len": length if isinstance(length, int) else None, "state": getattr(engine, "state", "ready")}

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    def _engine_for(model: str):
        engine = models.get(model)
        if engine is None:
            served = ", ".join(models) or "(none)"
            raise EngineError404(f"the model `{model}` does not exist on this server; it serves: {served}")
        return engine

    @app.post("/v1/chat/completions", response_model=S.ChatCompletion, responses={
        **err_docs, 200: {"content": {"text/event-stream": {"schema": S.ChatCompletionChunk.model_json_schema()}},
                          "description": "The answer, or with stream: true server-sent chat.completion.chunk events."}})
    async def chat_completions(body: S.ChatCompletionRequest, request: Request):
        engine = _engine_for(body.model)
        if _relayed(engine):
            return await _proxy(engine, body.model, "/v1/chat/completions", request, bool(body.stream))
        t0 = time.perf_counter()
        if body.top_logprobs is not None and not body.logprobs:
            raise _bad("top_logprobs needs logprobs: true", "top_logprobs")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        if max_tokens == 0:
            raise _bad("max_tokens must be at least 1", param)
        messages = [m.model_dump(exclude={"name"}) for m in body.messages]
        ids = await asyncio.to_thread(engine.chat_ids, messages)
        k = (body.top_logprobs or 0) if body.logprobs else None
        return await _generate(engine, body, request, "chat", [ids], [""], max_tokens, param,
                               _stops(body.stop) + tuple(engine.default_stops), k, strip=True, echo=False, t0=t0)

    @app.post("/v1/completions", response_model=S.Completion, responses={
        **err_docs, 200: {"content": {"text/event-stream": {"schema": S.Completion.model_json_schema()}},
                          "description": "The answer, or with stream: true server-sent text_completion events."}})
    async def completions(body: S.CompletionRequest, request: Request):
        engine = _engine_for(body.model)
        if _relayed(engine):
            return await _proxy(engine, body.model, "/v1/completions", request, bool(body.stream))
        t0 = time.perf_counter()
        prompt = body.prompt
        if isinstance(prompt, str):
            texts, given = [prompt], None
        elif not prompt:
            raise _bad("the prompt is empty", "prompt")
        elif all(isinstance(p, str) for p in prompt):
            texts, given = list(prompt), None
        elif all(isinstance(p, int) for p in prompt):
            texts, given = None, [list(prompt)]
        else:
            texts, given = None, [list(p) for p in prompt]
        count = len(texts if texts is not None else given)
        if count > limits.max_prompts:
            raise _bad(f"{count} prompts in one request; this server takes at most {limits.max_prompts}", "prompt")
        if body.max_tokens == 0 and not body.echo:
            raise _bad("max_tokens 0 is only allowed with echo: true (the prompt's own log-probabilities)", "max_tokens")
        if texts is not None:
            ids = await asyncio.to_thread(lambda: [engine.text_ids(t) for t in texts])
        else:
            ids = given
            if any(not p for p in ids):
                raise _bad("the prompt is empty: give at least one token", "prompt")
            if body.echo:
                texts = await asyncio.to_thread(lambda: [engine.ids_text(p) for p in ids])
        k = body.logprobs
        return await _generate(engine, body, request, "text", ids, texts if body.echo else None, body.max_tokens,
                               "max_tokens", _stops(body.stop), k, strip=False, echo=bool(body.echo), t0=t0)

    # ---- in-process generation ---------------------------------------------------------------
    async def _generate(engine, body, request: Request, kind: str, prompts: list[list[int]], echo_texts,
                        max_tokens: int | None, max_param: str, stops: tuple[str, ...], k: int | None,
                        strip: bool, echo: bool, t0: float):
        name = body.model
        n = body.n or 1
        if n > limits.max_n:
            raise _bad(f"n is {n}; this server generates at most {limits.max_n} choices per prompt (--max-n)", "n")
        if max_tokens is not None and max_tokens > limits.max_tokens:
            raise _bad(f"{max_param} is {max_tokens}; this server generates at most {limits.max_tokens} tokens "
                       "per choice (--max-tokens)", max_param)
        if body.min_tokens and not (body.ignore_eos and max_tokens is not None and body.min_tokens == max_tokens):
            raise _bad("min_tokens is supported as 0, or equal to max_tokens together with ignore_eos: true", "min_tokens")
        if any(not p for p in prompts):
            raise _bad("the prompt is empty: give at least one token of text", "prompt" if kind == "text" else "messages")
        echo_lps: list[list[Any]] | None = None
        if echo and k is not None:
            echo_lps = [await engine.score(p, k) for p in prompts]
        try:
            base = _sampling(body, max(1, max_tokens or 1), stops)
        except LaminiError as exc:
            raise _bad(str(exc)) from None
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        choices = [_Choice(p * n + i, p) for p in range(len(prompts)) for i in range(n)]
        requests = []
        for c in choices:
            ids = prompts[c.prompt]
            room = min(engine.context_length - len(ids), limits.max_tokens)
            new = max_tokens if max_tokens else max(1, room)
            params = replace(base, max_new_tokens=new, seed=choice_seed(body.seed, c.index - c.prompt * n))
            requests.append(EngineRequest(f"{rid}-{c.index}", ids, params, k, strip))
        prompt_tokens = sum(len(p) for p in prompts)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def prefix(c: _Choice) -> tuple[str, list[Any] | None]:
            """What an echoed choice starts with: the prompt text (and its log-probabilities)."""
            if not echo:
                return "", None
            text = echo_texts[c.prompt]
            lps = None
            if echo_lps is not None:
                first = prompts[c.prompt][0]
                lps = [("first", first)] + echo_lps[c.prompt][1:]
            return text, lps

        if max_tokens == 0:  # echo alone: nothing is generated
            for c in choices:
                text, lps = prefix(c)
                c.texts.append(text)
                c.logprobs.extend(lps or [])
                c.finish_reason = "length"
            metrics.tokens(name, prompt_tokens, 0)
            metrics.request_done(name, 200)
            metrics.e2e.labels(name).observe(time.perf_counter() - t0)
            if body.stream:
                async def echo_only():
                    for c in choices:
                        yield _sse(_chunk_text(rid, created, name, c, c.texts[0], c.logprobs, "length", engine, k))
                    if include_usage:
                        yield _sse(_usage_chunk(rid, created, name, "text", prompt_tokens, 0))
                    yield DONE
                return EventStream(echo_only())
            return _final(rid, created, name, kind, choices, prompt_tokens, engine, k)

        fan = Fanout(engine, requests)
        try:
            await fan.started()
        except InvalidRequest as exc:
            if kind == "text" and exc.param == "messages":  # a completion's prompt is `prompt`
                exc.param = "prompt"
            raise
        first_token = [True]

        def observe(c: _Choice, delta) -> None:
            now = time.perf_counter()
            if delta.token_ids:
                if first_token[0]:
                    metrics.ttft.labels(name).observe(now - t0)
                    first_token[0] = False
                elif c.last is not None:
                    metrics.itl.labels(name).observe(now - c.last)
                c.last = now
            if delta.finish_reason is not None:
                c.finish_reason = delta.finish_reason
                if delta.usage is not None:
                    c.completion_tokens = delta.usage.completion_tokens
                if delta.finish_reason != "abort":
                    metrics.finished(name, delta.finish_reason)

        def finish_metrics(status: int) -> None:
            metrics.tokens(name, prompt_tokens, sum(c.completion_tokens for c in choices))
            metrics.request_done(name, status)
            metrics.e2e.labels(name).observe(time.perf_counter() - t0)

        if body.stream:
            async def events():
                ok = False
                try:
                    for c in choices:
                        text, lps = prefix(c)
                        if kind == "chat":
                            yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                                        "choices": [{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                                     "logprobs": None, "finish_reason": None}]})
                        elif text:
                            yield _sse(_chunk_text(rid, created, name, c, text, lps, None, engine, k))
                    async for i, delta in fan.items():
                        c = choices[i]
                        observe(c, delta)
                        reason = delta.finish_reason if delta.finish_reason != "abort" else None
                        if not (delta.text or delta.logprobs or reason):
                            continue
                        if kind == "chat":
                            yield _sse(_chunk_chat(rid, created, name, c, delta.text, delta.logprobs, reason))
                        else:
                            yield _sse(_chunk_text(rid, created, name, c, delta.text, delta.logprobs, reason, engine, k))
                    if include_usage:
                        completion = sum(c.completion_tokens for c in choices)
                        yield _sse(_usage_chunk(rid, created, name, kind, prompt_tokens, completion))
                    yield DONE
                    ok = True
                except EngineError as exc:
                    yield _sse({"error": {"message": str(exc), "type": exc.type, "param": exc.param, "code": None}})
                    yield DONE
                finally:
                    await fan.close()
                    finish_metrics(200 if ok else 499)
            return EventStream(events())

        async def collect():
            async for i, delta in fan.items():
                c = choices[i]
                observe(c, delta)
                c.texts.append(delta.text)
                if delta.logprobs:
                    c.logprobs.extend(delta.logprobs)

        for c in choices:
            text, lps = prefix(c)
            c.texts.append(text)
            c.logprobs.extend(lps or [])
        work = asyncio.ensure_future(collect())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
            await asyncio.gather(work, gone, return_exceptions=True)
            await fan.close()
        if work.cancelled():  # the client left: nobody reads the answer
            finish_metrics(499)
            return Response(status_code=499)
        work.result()  # raises an engine error that came mid-answer
        finish_metrics(200)
        return _final(rid, created, name, kind, choices, prompt_tokens, engine, k)

    # ---- vLLM: the body as sent, the bytes as answered ------------------------------------------
    async def _proxy(engine, name: str, path: str, request: Request, stream: bool):
        from lamini_serve.engines.relay import UpstreamLost

        t0 = time.perf_counter()
        raw = await request.json()
        resp = await engine.request(path, raw)
        ctype = resp.headers.get("content-type", "application/json")
        headers = {k: v for k, v in resp.headers.items() if k.lower() == "retry-after"}
        if stream and resp.status_code == 200:
            async def passthrough():
                first, status = True, resp.status_code
                try:
                    async for chunk in resp.aiter_raw():
                        if first:
                            metrics.ttft.labels(name).observe(time.perf_counter() - t0)
                            first = False
                        yield chunk
                except UpstreamLost as exc:  # the server died mid-answer: say so, as an engine error would
                    status = 503
                    gone = engine.lost(exc)
                    yield b"\n\n" + _sse({"error": {"message": str(gone), "type": gone.type, "param": None,
                                                      "code": None}})
                    yield DONE
                finally:
                    await resp.aclose()
                    metrics.request_done(name, status)
                    metrics.e2e.labels(name).observe(time.perf_counter() - t0)
            return EventStream(passthrough(), resp.status_code, ctype, headers)
        try:
            content = await resp.aread()
        except UpstreamLost as exc:
            metrics.request_done(name, 503)
            raise engine.lost(exc) from None
        finally:
            await resp.aclose()
        metrics.request_done(name, resp.status_code)
        if resp.status_code == 200:
            metrics.e2e.labels(name).observe(time.perf_counter() - t0)
            try:
                answer = json.loads(content)
                usage = answer.get("usage") or {}
                metrics.tokens(name, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
                for choice in answer.get("choices") or []:
                    if choice.get("finish_reason"):
                        metrics.finished(name, str(choice["finish_reason"]))
            except (ValueError, AttributeError, TypeError):
                pass
        return Response(content, resp.status_code, headers, media_type=ctype)

    def openapi():
        """FastAPI's schema, less the 422 it documents for every body: this server answers 400."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path in spec.get("paths", {}).values():
                for op in path.values():
                    if op.get("responses", {}).pop("422", None) is not None:
                        op["responses"].setdefault("400", {"description": "Invalid request", "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}})
            for name in ("HTTPValidationError", "ValidationError"):
                spec.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes)
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    else:
        app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes)
    return app


class EngineError404(EngineError):
    status, type, code = 404, "invalid_request_error", "model_not_found"

    def __init__(self, message: str):
        super().__init__(message, param="model")


# ---- helpers ------------------------------------------------------------------------------------
async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _stops(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _sampling(body, max_new: int, stops: tuple[str, ...]):
    from lamini_serve.generation import SamplingParams

    return SamplingParams(
        max_new_tokens=max_new,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=max(0, body.top_k or 0),
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        seed=body.seed,
        stop=stops,
        ignore_eos=bool(body.ignore_eos),
    )


def _chat_logprobs(lps, always: bool = False) -> dict | None:
    if not lps and not always:
        return None
    return {"content": [{"token": lp.token, "logprob": _lp(lp.logprob), "bytes": list(lp.token.encode("utf-8")),
                         "top_logprobs": [{"token": t, "logprob": _lp(v), "bytes": list(t.encode("utf-8"))}
                                          for _id, t, v in lp.top]} for lp in lps]}


def _text_logprobs(c: _Choice, lps, engine, k: int | None) -> dict | None:
    """Completions' logprobs for these tokens; advances the choice's text offset."""
    if k is None or lps is None:
        return None
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for lp in lps:
        if isinstance(lp, tuple):  # ("first", id): the echoed first prompt token, with no log-probability
            token, value, top = engine.tokenizer.decode([lp[1]]), None, None
        else:
            token, value = lp.token, _lp(lp.logprob)
            top = {t: _lp(v) for _id, t, v in lp.top}
            top.setdefault(token, value)
        out["tokens"].append(token)
        out["token_logprobs"].append(value)
        out["top_logprobs"].append(top)
        out["text_offset"].append(c.offset)
        c.offset += len(token)
    return out


def _chunk_chat(rid, created, name, c: _Choice, text: str, lps, reason) -> dict:
    delta = {"content": text} if text else {}
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
            "choices": [{"index": c.index, "delta": delta, "logprobs": _chat_logprobs(lps), "finish_reason": reason}]}


def _chunk_text(rid, created, name, c: _Choice, text: str, lps, reason, engine, k) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": name,
            "choices": [{"index": c.index, "text": text, "logprobs": _text_logprobs(c, lps, engine, k),
                         "finish_reason": reason}]}


def _usage_chunk(rid, created, name, kind, prompt_tokens, completion_tokens) -> dict:
    return {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion", "created": created,
            "model": name, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _final(rid, created, name, kind, choices: list[_Choice], prompt_tokens: int, engine, k) -> JSONResponse:
    completion = sum(c.completion_tokens for c in choices)
    out = []
    for c in choices:
        reason = c.finish_reason if c.finish_reason != "abort" else None
        if kind == "chat":
            out.append({"index": c.index, "message": {"role": "assistant", "content": "".join(c.texts)},
                        "logprobs": _chat_logprobs(c.logprobs, True) if k is not None else None, "finish_reason": reason})
        else:
            out.append({"index": c.index, "text": "".join(c.texts), "logprobs": _text_logprobs(c, c.logprobs, engine, k),
                        "finish_reason": reason})
    obj = "chat.completion" if kind == "chat" else "text_completion"
    return JSONResponse({"id": rid, "object": obj, "created": created, "model": name, "choices": out,
                         "usage": _usage(prompt_tokens, completion)})
