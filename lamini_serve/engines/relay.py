"""Engines that are another OpenAI-compatible server: the gateway relays bytes to them.

`Relay` is what they share: one pooled `httpx.AsyncClient`, the request sent as JSON
with the server's key, the streaming response handed back untouched (the gateway
copies its raw bytes, so relaying costs next to nothing), and a broken connection
turned into `Unavailable` (503 + Retry-After). `VllmEngine` adds a vLLM server it
starts and supervises; `RemoteEngine` relays to a server someone else runs (a vLLM
container, another `lamini serve`, any OpenAI-compatible endpoint), named on the
command line as `NAME=http://HOST:PORT/v1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

from lamini_serve.engines.base import InvalidRequest, Unavailable

RETRY_AFTER_S = 5
UPSTREAM_KEY_ENV = "LAMINI_UPSTREAM_API_KEY"


class Relay:
    """The relaying half of an engine that is an HTTP server (subclasses set `url`, `api_key`)."""

    relayed = True
    name: str
    url: str = ""  # http://HOST:PORT, without /v1
    api_key: str | None = None
    state: str = "stopped"
    max_model_len: int | None = None

    def _open_client(self) -> None:
        import httpx

        if getattr(self, "_client", None) is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=60),
                trust_env=False,
            )

    async def _close_client(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    def prepare(self, body: dict[str, Any], path: str) -> dict[str, Any]:
        """The body the server gets (subclasses set the model's name there)."""
        return dict(body)

    def _unavailable(self) -> Unavailable:
        return Unavailable(f"{self.name} is {self.state}", retry_after=RETRY_AFTER_S)

    async def request(self, path: str, body: dict[str, Any]):
        """POST `body` to the server's `path` (e.g. "/v1/chat/completions"); the streaming
        `httpx.Response`, whatever its status. The caller iterates `aiter_raw()` and closes it."""
        import httpx

        if self.state != "ready" or getattr(self, "_client", None) is None:
            raise self._unavailable()
        if not path.startswith("/"):
            path = "/v1/" + path
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object")
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        req = self._client.build_request("POST", self.url + path, json=self.prepare(body, path), headers=headers)
        try:
            return await self._client.send(req, stream=True)
        except httpx.TransportError as exc:
            raise self.lost(exc) from None

    def lost(self, exc: BaseException) -> Unavailable:
        """The error for a request whose connection to the server broke (before or during the answer)."""
        return Unavailable(f"{self.name} stopped answering ({type(exc).__name__}); it may be restarting",
                           retry_after=RETRY_AFTER_S)


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
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            r = await self._client.get(self.base_url + "/models", headers=headers, timeout=5.0)
        except httpx.HTTPError as exc:
            self.state, self.problem = "connecting", f"not answering ({type(exc).__name__})"
            return
        if r.status_code in (401, 403):
            self.state = "connecting"
            self.problem = f"it refuses the key (HTTP {r.status_code}); set {UPSTREAM_KEY_ENV}"
            return
        try:
            cards = {m["id"]: m for m in r.json()["data"]}
        except (ValueError, KeyError, TypeError):
            self.state, self.problem = "connecting", f"GET /v1/models answered HTTP {r.status_code}, not a model list"
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
