"""The OpenAI-compatible client against a real local HTTP server that injects faults."""

import asyncio
import time

import pytest

from lamini_serve.teacher.client import ClientConfig, OpenAIClient, RateLimiter, Request, TeacherFatal
from lamini_serve.testing.openai_server import FakeOpenAIServer, FaultPlan


def _send_all(url, n, **kw):
    cfg = ClientConfig(url, "fake", timeout=kw.pop("timeout", 2.0), backoff_base=0.02, **kw)

    async def main():
        async with OpenAIClient(cfg) as c:
            reqs = [Request(f"k{i}", "chat", {"messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 8})
                    for i in range(n)]
            return await asyncio.gather(*[c.send(r) for r in reqs]), c.retries

    return asyncio.run(main())


def test_every_fault_is_retried_until_the_answer_arrives():
    faults = FaultPlan({"429": 0.15, "500": 0.15, "timeout": 0.1, "truncated": 0.15}, timeout_sleep=3.0, retry_after=0.1)
    srv = FakeOpenAIServer(faults=faults)
    with srv as url:
        results, retries = _send_all(url, 80, concurrency=16, timeout=1.0)
    assert all(r.ok for r in results)
    assert [r.text for r in results] == [f"Here is a concise answer to: question {i}" for i in range(80)]
    injected = sum(srv.served[f] for f in ("429", "500", "timeout", "truncated"))
    assert injected > 10 and retries == injected
    assert all(srv.served[f] > 0 for f in ("429", "500", "timeout", "truncated"))


def test_retry_after_is_honoured():
    srv = FakeOpenAIServer(faults=FaultPlan({"429": 1.0}, retry_after=1.0))
    with srv as url:
        t0 = time.time()
        results, retries = _send_all(url, 1, concurrency=1)
    assert results[0].ok and retries == 1
    assert time.time() - t0 >= 1.0


def test_garbage_and_empty_text_come_back_for_the_caller_to_judge():
    srv = FakeOpenAIServer(faults=FaultPlan({"garbage": 0.5, "empty": 0.5}))
    with srv as url:
        results, retries = _send_all(url, 10, concurrency=4)
    assert retries == 0 and all(r.ok for r in results)
    assert {r.text[:1] for r in results} <= {"", "\ufffd"}


def test_refused_key_stops_at_once():
    srv = FakeOpenAIServer(api_key="right")
    with srv as url:
        with pytest.raises(TeacherFatal, match="refused the API key"):
            _send_all(url, 1, concurrency=1, api_key="wrong")
    assert srv.served["401"] == 1  # no retries


def test_a_server_that_is_down_stops_after_the_retries():
    t0 = time.time()
    with pytest.raises(TeacherFatal, match="unreachable.*after 2 retries"):
        _send_all("http://127.0.0.1:9/v1", 1, concurrency=1, max_retries=2)
    assert time.time() - t0 < 10


def test_rate_limiter_paces_requests():
    async def main():
        lim = RateLimiter(per_minute=600, burst_seconds=1)  # 10 a second, bursts of 10
        t0 = time.monotonic()
        for _ in range(30):
            await lim.take()
        return time.monotonic() - t0

    assert 1.8 <= asyncio.run(main()) <= 3.5


def test_requests_per_minute_limit_in_the_client():
    with FakeOpenAIServer() as url:
        t0 = time.time()
        results, _ = _send_all(url, 20, concurrency=20, requests_per_minute=600)  # burst 50: no wait
        fast = time.time() - t0
        t0 = time.time()
        results, _ = _send_all(url, 20, concurrency=20, requests_per_minute=120)  # 2/s, burst 10
        slow = time.time() - t0
    assert fast < 2 and 4 <= slow <= 8


def test_url_without_a_scheme_is_refused():
    from lamini_serve.errors import LaminiError

    with pytest.raises(LaminiError, match="needs a scheme, e.g. http://localhost:8000"):
        ClientConfig("localhost:8000", "m")
