"""A real HTTP server that speaks the OpenAI API and injects faults, for tests and benchmarks.

It answers /v1/chat/completions and /v1/completions deterministically from the
request (so two runs can be compared row for row), after a fixed latency, and
fails on purpose on a seeded share of first attempts: 429 with Retry-After,
500, 400 (a request the server refuses), a reply slower than the client's
timeout, a truncated JSON body, garbage text, empty text, prose without a single
instruction, an answer that loops, a stream whose connection drops halfway
("break"). It streams (server-sent events) when asked, lists its `models` at
/v1/models, and `model_faults` fixes the fault of every request to one model
(a model that always fails, beside others that answer). Retries of the same request succeed, as with a
real flaky server, so a resumed run can finish; `faulty_attempts` makes faults
last (a server that fails everything), `sticky` makes the same requests fail on
every faulty attempt, and `roles` aims them at generation calls or answers only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import threading
from collections import Counter
from dataclasses import dataclass, field

FAULTS = ("429", "500", "400", "timeout", "truncated", "garbage", "empty", "prose", "loop", "break")
ROLES = ("generate", "answer")
BAD_REQUEST = "fake: max_tokens is too large for this model (the fault injected as 400)"
PROSE = "I am sorry, but I would rather talk about the weather today. It is sunny."
LOOP = "The answer is the answer is the answer. " * 8


@dataclass
class FaultPlan:
    rates: dict[str, float] = field(default_factory=dict)  # fault -> share of first attempts
    seed: int = 0
    retry_after: float = 0.2
    timeout_sleep: float = 3.0
    faulty_attempts: int = 1  # faults hit only the first N attempts of a request
    sticky: bool = False  # one draw per request, not per attempt: a faulty request stays faulty
    roles: tuple[str, ...] = ROLES  # which requests may fail: generation calls, answers

    def pick(self, digest: str, attempt: int, role: str = "answer") -> str | None:
        if attempt > self.faulty_attempts or role not in self.roles:
            return None
        u = random.Random(f"{self.seed}:{digest}" + ("" if self.sticky else f":{attempt}")).random()
        acc = 0.0
        for name in FAULTS:
            acc += self.rates.get(name, 0.0)
            if u < acc:
                return name
        return None


def fake_instructions(prompt: str, n: int) -> list[str]:
    """Deterministic, distinct, plausible-looking tasks derived from a prompt."""
    h = hashlib.sha256(prompt.encode()).hexdigest()
    verbs = ["Explain", "Describe", "Summarize", "List three facts about", "Write a short note on", "Compare"]
    return [f"{verbs[int(h[i % 60:i % 60 + 2], 16) % len(verbs)]} subject {h[:10]}-{i}." for i in range(n)]


def prompt_text(kind: str, body: dict) -> str:
    if kind == "chat":
        return "\n".join(m.get("content", "") for m in body.get("messages", []))
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)  # a list of prompts or of token ids


def role_of(kind: str, body: dict) -> str:
    """"generate" for a request for new instructions (either prompt style), else "answer"."""
    text = prompt_text(kind, body)
    return "generate" if (re.search(r"Generate (\d+)", text) or "<example>" in text
                          or re.search(r"\n\d+\.\s*$", text)) else "answer"


def answer_for(kind: str, body: dict) -> str:
    text = prompt_text(kind, body)
    m = re.search(r"Generate (\d+)", text)
    if m or "<example>" in text:
        n = int(m.group(1)) if m else 20
        return "\n".join(f"<example>{t}</example>" for t in fake_instructions(text, n))
    if re.search(r"\n\d+\.\s*$", text):  # a numbered list to continue
        start = int(re.search(r"(\d+)\.\s*$", text).group(1))
        items = fake_instructions(text, 5)
        return " " + items[0] + "".join(f"\n{start + i}. {t}" for i, t in enumerate(items[1:], 1)) + "\n\n"
    last = body["messages"][-1]["content"] if kind == "chat" else text
    return f"Here is a concise answer to: {last.strip()[:200]}"


class FakeOpenAIServer:
    """`with FakeOpenAIServer(latency=0.2, faults=FaultPlan({...})) as url: ...`

    Runs an aiohttp server on its own event loop in a background thread.
    """

    def __init__(self, latency: float = 0.0, faults: FaultPlan | None = None, api_key: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, models: tuple[str, ...] = ("fake",),
                 model_faults: dict[str, str] | None = None, stream_delay: float = 0.0):
        self.latency = latency
        self.models = tuple(models)
        self.model_faults = dict(model_faults or {})
        self.stream_delay = stream_delay
        self.faults = faults or FaultPlan()
        self.api_key = api_key
        self.host, self.port = host, port
        self.attempts: Counter[str] = Counter()
        self.served: Counter[str] = Counter()  # outcome -> count
        self.history: dict[str, list[str]] = {}  # request digest -> outcome of each attempt
        self.requests: list[dict] = []  # every request body, in order
        self.url = ""
        self._loop = None
        self._runner = None
        self._thread = None

    def app(self):
        from aiohttp import web

        def refused(request: "web.Request"):
            """A 401 when the server has a key and the request does not carry it; else None."""
            if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                self.served["401"] += 1
                return web.json_response({"error": {"message": "Incorrect API key provided"}}, status=401)
            return None

        async def handle(request: "web.Request"):
            raw = await request.read()
            if (no := refused(request)) is not None:
                return no
            kind = "chat" if request.path.endswith("/chat/completions") else "completion"
            try:
                body = json.loads(raw)
            except ValueError:
                return web.json_response({"error": {"message": "bad json"}}, status=400)
            digest = hashlib.sha256(raw).hexdigest()
            self.requests.append(body)
            self.attempts[digest] += 1
            fault = self.model_faults.get(body.get("model")) or self.faults.pick(digest, self.attempts[digest],
                                                                                  role_of(kind, body))
            if self.latency:
                await asyncio.sleep(self.latency)
            self.served[fault or "ok"] += 1
            self.history.setdefault(digest, []).append(fault or "ok")
            if fault == "429":
                return web.json_response({"error": {"message": "rate limited"}}, status=429,
                                         headers={"Retry-After": str(self.faults.retry_after)})
            if fault == "500":
                return web.json_response({"error": {"message": "internal error"}}, status=500)
            if fault == "400":
                return web.json_response({"error": {"message": BAD_REQUEST, "type": "invalid_request_error"}},
                                         status=400)
            if fault == "timeout":
                await asyncio.sleep(self.faults.timeout_sleep)
            text = answer_for(kind, body)
            if fault == "garbage":
                text = "\ufffd\x00#%$@!" * 3
            elif fault == "empty":
                text = ""
            elif fault == "prose":
                text = PROSE
            elif fault == "loop":
                text = LOOP
            if body.get("stream"):
                return await self._stream(request, kind, body, text, fault, digest)
            choice = {"index": 0, "finish_reason": "stop"}
            if kind == "chat":
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            n_prompt, n_out = len(raw) // 4, max(1, len(text) // 4)
            data = json.dumps({
                "id": "fake-" + digest[:12], "object": "chat.completion" if kind == "chat" else "text_completion",
                "model": body.get("model"), "choices": [choice],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out},
            }).encode()
            if fault == "truncated":
                data = data[: len(data) // 2]
            return web.Response(body=data, content_type="application/json")

        async def models(request: "web.Request"):
            if (no := refused(request)) is not None:
                return no
            return web.json_response({"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake",
                 "role": "teacher" if k == 0 else "student"} for k, m in enumerate(self.models)]})

        app = web.Application()
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/chat/completions", handle)
        app.router.add_post("/v1/completions", handle)
        return app

    async def _stream(self, request, kind: str, body: dict, text: str, fault: str | None, digest: str):
        """Server-sent events, a word per chunk; "break" drops the connection halfway."""
        from aiohttp import web

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        words = re.findall(r"\S+\s*", text) or [""]
        base = {"id": "fake-" + digest[:12], "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                "created": 0, "model": body.get("model")}

        def choice(piece: str, finish: str | None) -> dict:
            if kind == "chat":
                return {"index": 0, "delta": {"content": piece}, "finish_reason": finish}
            return {"index": 0, "text": piece, "finish_reason": finish}

        for i, word in enumerate(words):
            if fault == "break" and i == max(1, len(words) // 2):
                request.transport.close()  # the connection dies mid-answer, with no [DONE]
                return resp
            await resp.write(f"data: {json.dumps({**base, 'choices': [choice(word, None)]})}\n\n".encode())
            if self.stream_delay:
                await asyncio.sleep(self.stream_delay)
        await resp.write(f"data: {json.dumps({**base, 'choices': [choice('', 'stop')]})}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 1, "completion_tokens": len(words), "total_tokens": 1 + len(words)}
            await resp.write(f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _start(self) -> None:
        from aiohttp import web

        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{port}/v1"

    def __enter__(self) -> str:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.url

    def __exit__(self, *exc) -> None:
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        try:
            fut.result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def main() -> None:  # python -m lamini_serve.testing.openai_server --port 8001
    import argparse

    ap = argparse.ArgumentParser(description="Serve the fault-injecting fake OpenAI API.")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--fault", action="append", default=[], help="NAME=RATE, e.g. 429=0.1")
    ap.add_argument("--api-key", default=None)
    args = ap.parse_args()
    rates = {k: float(v) for k, v in (f.split("=") for f in args.fault)}
    srv = FakeOpenAIServer(args.latency, FaultPlan(rates), api_key=args.api_key, port=args.port)
    with srv as url:
        print(f"serving {url}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
