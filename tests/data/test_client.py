"""The OpenAI-compatible client against a real local HTTP server that injects faults."""

import asyncio
import time

import pytest

from lamini_serve.teacher.client import (
    ClientConfig,
    OpenAIClient,
    RateLimiter,
    Request,
    TeacherFatal,
    error_message,
)
from lamini_serve.testing.openai_server import BAD_REQUEST, FakeOpenAIServer, FaultPlan


class FakeClock:
    """Time that passes only when the limiter sleeps: its pacing is exact and costs no waiting."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    async def sleep(self, seconds):
        self.now += seconds
        await asyncio.sleep(0)  # let the other tasks run, as a real sleep would


def _send_all(url, n, clock=None, **kw):
    cfg = ClientConfig(url, "fake", timeout=kw.pop("timeout", 2.0), backoff_base=0.02, **kw)
    paced = {"clock": clock, "sleep": clock.sleep} if clock else {}

    async def main():
        async with OpenAIClient(cfg, **paced) as c:
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
    texts = [r.completion.text for r in results]
    assert texts == [f"Here is a concise answer to: question {i}" for i in range(80)]
    assert all(r.completion.finish_reason == "stop" and r.completion.completion_tokens > 0 for r in results)
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
    assert {r.completion.text[:1] for r in results} <= {"", "\ufffd"}


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
    clock = FakeClock()

    async def main():
        lim = RateLimiter(per_minute=600, burst_seconds=1, clock=clock, sleep=clock.sleep)  # 10 a second, bursts of 10
        granted = []
        for _ in range(30):
            await lim.take()
            granted.append(clock.now)
        big = await lim.take(1000)  # more than a burst: waits for a full bucket, is charged a burst
        return granted, big

    granted, big = asyncio.run(main())
    assert granted[:10] == [0.0] * 10
    assert granted[10:] == pytest.approx([0.1 * k for k in range(1, 21)])
    assert big == 10 and clock.now == pytest.approx(3.0)


def test_requests_per_minute_limit_in_the_client():
    with FakeOpenAIServer() as url:
        fast, slow = FakeClock(), FakeClock()
        results, _ = _send_all(url, 20, fast, concurrency=20, requests_per_minute=600)  # burst 50: no wait
        assert all(r.ok for r in results)
        results, _ = _send_all(url, 20, slow, concurrency=20, requests_per_minute=120)  # 2/s, burst 10
        assert all(r.ok for r in results)
    assert fast.now == 0.0
    assert slow.now == pytest.approx(5.0)  # the 10 past the burst, half a second apart


def test_the_servers_own_error_message_is_kept():
    srv = FakeOpenAIServer(faults=FaultPlan({"400": 0.5, "500": 0.5}, faulty_attempts=10**6, sticky=True))
    with srv as url:
        results, retries = _send_all(url, 12, concurrency=4, max_retries=1)
    errors = {r.error for r in results}
    assert errors == {f"HTTP 400: {BAD_REQUEST}", "HTTP 500: internal error (after 1 retries)"}
    assert srv.served["400"] == sum(r.error.startswith("HTTP 400") for r in results)  # 400 is not retried
    n500 = sum(r.error.startswith("HTTP 500") for r in results)
    assert n500 and srv.served["500"] == 2 * n500 and retries == n500


def test_error_message_reads_the_usual_error_bodies():
    assert error_message(r'{"error": {"message": "bad  max_tokens\n", "type": "x"}}') == "bad max_tokens"
    assert error_message('{"object": "error", "message": "vllm says no"}') == "vllm says no"
    assert error_message('{"detail": "Not Found"}') == "Not Found"
    assert error_message("<html>502 Bad Gateway</html>") == "<html>502 Bad Gateway</html>"
    assert error_message("x" * 400, limit=10) == "x" * 10 + "..."


def test_url_without_a_scheme_is_refused():
    from lamini_serve.errors import LaminiError

    with pytest.raises(LaminiError, match="needs a scheme, e.g. http://localhost:8000"):
        ClientConfig("localhost:8000", "m")
