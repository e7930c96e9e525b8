"""Engines that are another OpenAI-compatible server: the gateway relays bytes to them.

`Relay` is what they share: one pooled aiohttp client session, the request sent as JSON
with the server's key, the streaming response handed back untouched (`Upstream`: the
gateway copies its raw bytes), and a broken connection turned into `Unavailable` (503 +
Retry-After). aiohttp rather than httpx: every streamed token crosses the relay as one
read, and aiohttp's C parser reads it for about a third of httpcore's CPU, which on a
CPU machine is taken from the engine (benchmarks/relay.py). `VllmEngine` adds a vLLM server it
starts and supervises; `RemoteEngine` relays to a server someone else runs (a vLLM
container, another `lamini serve`, any OpenAI-compatible endpoint), named on the
command line as `NAME=http://HOST:PORT/v1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import Any

from lamini_serve.engines.base import InvalidRequest, Unavailable

RETRY_AFTER_S = 5
UPSTREAM_KEY_ENV = "LAMINI_UPSTREAM_API_KEY"


class UpstreamLost(Exception):
    """The connection to the server broke while its answer was being read."""


_LOST = (OSError, asyncio.TimeoutError)  # with aiohttp.ClientError, added where aiohttp is imported


def _lost_errors() -> tuple:
    import aiohttp

    return (aiohttp.ClientError, *_LOST)


class Upstream:
    """A server's answer as the gateway relays it: the status and headers at once, the body
    as it arrives (`aiter_raw`) or whole (`aread`); `aclose` gives the connection back."""

    def __init__(self, resp):
        self._resp = resp
        self.status_code = resp.status
        self.headers = resp.headers

    async def aiter_raw(self):
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except _lost_errors() as exc:
            raise UpstreamLost(type(exc).__name__) from exc

    async def aread(self) -> bytes:
        try:
            return await self._resp.read()
        except _lost_errors() as exc:
            raise UpstreamLost(type(exc).__name__) from exc

    async def aclose(self) -> None:
        self._resp.release()


class Relay:
    """The relaying half of an engine that is an HTTP server (subclasses set `url`, `api_key`)."""

    relayed = True
    name: str
    url: str = ""  # http://HOST:PORT, without /v1
    api_key: str | None = None
    state: str = "stopped"
    max_model_len: int | None = None

    def _open_client(self) -> None:
        import aiohttp

        if getattr(self, "_client", None) is None:
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=None),
                auto_decompress=False,
            )

    async def _close_client(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def _get(self, url: str, timeout: float = 5.0) -> tuple[int, Any] | None:
        """GET `url` with the server's key: (status, the JSON body or None), or None when it does not answer."""
        import aiohttp

        try:
            async with self._client.get(url, headers=self._headers(),
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                raw = await r.read()
                try:
                    return r.status, json.loads(raw)
                except ValueError:
                    return r.status, None
        except _lost_errors():
            return None

    def prepare(self, body: dict[str, Any], path: str) -> dict[str, Any]:
        """The body the server gets (subclasses set the model's name there)."""
        return dict(body)

    def _unavailable(self) -> Unavailable:
        return Unavailable(f"{self.name} is {self.state}", retry_after=RETRY_AFTER_S)

    async def request(self, path: str, body: dict[str, Any]) -> Upstream:
        """POST `body` to the server's `path` (e.g. "/v1/chat/completions"); its answer, whatever
        its status, not yet read. The caller reads it (`aiter_raw`, `aread`) and closes it."""
        if self.state != "ready" or getattr(self, "_client", None) is None:
            raise self._unavailable()
        if not path.startswith("/"):
            path = "/v1/" + path
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object")
        data = json.dumps(self.prepare(body, path), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", **self._headers()}
        try:
            return Upstream(await self._client.post(self.url + path, data=data, headers=headers))
        except _lost_errors() as exc:
            raise self.lost(exc) from None

    def lost(self, exc: BaseException) -> Unavailable:
        """The error for a request whose connection to the server broke (before or during the answer)."""
        what = str(exc) if isinstance(exc, UpstreamLost) else type(exc).__name__
        return Unavailable(f"{self.name} stopped answering ({what}); it may be restarting", retry_after=RETRY_AFTER_S)


class RemoteEngine(Relay):
    """A model on an OpenAI-compatible server that lamini does not run.

    `url` is the server's base URL (`http://HOST:PORT/v1`, the /v1 optional) with the
    model's id there after a `#` when it serves several (`http://vllm:8000/v1#smol-6l`);
    otherwise the one model it lists is used. The key, if it wants one, comes from
    $LAMINI_UPSTREAM_API_KEY. A watcher asks its `/v1/models` every few seconds: until
    it answers, the model's state is "connecting" and requests get 503.
    """

    kind = "remote"

    def __init__(self, name: str, url: str, api_key: str | None = None, poll_s: float = 5.0):
        base, _, model = url.partition("#")
        base = base.rstrip("/")
        self.name = name
        self.base_url = base if base.endswith("/v1") else base + "/v1"
        self.url = self.base_url.removesuffix("/v1")
        self.remote_model = model or None
        self.api_key = api_key if api_key is not None else (os.environ.get(UPSTREAM_KEY_ENV) or None)
        self.poll_s = poll_s
        self.state = "stopped"
        self.spec = None
        self.problem = ""
        self._client = None
        self._watcher: asyncio.Task | None = None

    def prepare(self, body: dict[str, Any], path: str) -> dict[str, Any]:
        body = dict(body)
        body["model"] = self.remote_model
        return body

    def _unavailable(self) -> Unavailable:
        why = f": {self.problem}" if self.problem else ""
        return Unavailable(f"{self.name} ({self.base_url}) is {self.state}{why}", retry_after=RETRY_AFTER_S)

    async def start(self) -> None:
        self._open_client()
        self.state = "connecting"
        await self._check()
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name=f"remote-{self.name}")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s if self.state == "ready" else min(self.poll_s, 1.0))
            await self._check()

    async def _check(self) -> None:
        """Ask the server which models it serves; ready when ours is there."""
        got = await self._get(self.base_url + "/models")
        if got is None:
            self.state, self.problem = "connecting", "not answering"
            return
        status, answer = got
        if status in (401, 403):
            self.state = "connecting"
            self.problem = f"it refuses the key (HTTP {status}); set {UPSTREAM_KEY_ENV}"
            return
        try:
            cards = {m["id"]: m for m in answer["data"]}
        except (KeyError, TypeError):
            self.state, self.problem = "connecting", f"GET /v1/models answered HTTP {status}, not a model list"
            return
        if self.remote_model is None and len(cards) == 1:
            self.remote_model = next(iter(cards))
        if self.remote_model is None and self.name in cards:
            self.remote_model = self.name
        if self.remote_model not in cards:
            listed = ", ".join(cards) or "none"
            self.state = "connecting"
            self.problem = (f"it serves {listed}; name one: {self.name}={self.base_url}#MODEL" if self.remote_model is None
                            else f"it does not serve {self.remote_model} (it serves {listed})")
            return
        length = cards[self.remote_model].get("max_model_len")
        self.max_model_len = length if isinstance(length, int) else None
        self.state, self.problem = "ready", ""

    async def wait_ready(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state != "ready":
            if deadline is not None and time.monotonic() > deadline:
                raise self._unavailable()
            await asyncio.sleep(0.2)

    async def aclose(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
        await self._close_client()
        self.state = "stopped"

    def __repr__(self) -> str:
        return f"RemoteEngine({self.name!r}, {self.base_url!r}, model={self.remote_model!r}, state={self.state!r})"
