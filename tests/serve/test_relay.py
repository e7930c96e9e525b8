"""The relay (every vLLM model and every NAME=URL goes through it): tokens pass as they come.

A real `lamini serve` relays to the fault-injecting fake OpenAI server, which streams a
word every STEP seconds; the client must see the first words long before the last, and
the server's sockets must not hold small writes back (Nagle's algorithm waiting for the
client's delayed ACK added 40 ms to every streamed answer's first token).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx

from lamini_serve.testing.openai_server import FakeOpenAIServer

STEP = 0.05


def test_a_relayed_stream_arrives_word_by_word_and_whole(serve):
    with FakeOpenAIServer(stream_delay=STEP) as upstream:
        served = serve(f"up={upstream}#fake")
        body = {"model": "up", "messages": [{"role": "user", "content": "Give three tips for staying healthy."}],
                "stream": True, "stream_options": {"include_usage": True}}
        for _ in range(2):  # the second on a warm connection, as clients send them
            t0, arrivals, text, usage = time.perf_counter(), [], [], None
            with httpx.stream("POST", served.base_url + "/chat/completions", json=body, timeout=30) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        usage = chunk.get("usage") or usage
                        for c in chunk["choices"]:
                            if (c.get("delta") or {}).get("content"):
                                arrivals.append(time.perf_counter() - t0)
                                text.append(c["delta"]["content"])
            words = len(text)
            assert words >= 5 and usage["completion_tokens"] == words
            # streamed, not buffered: the first word comes about (words - 1) steps before the last
            assert arrivals[-1] - arrivals[0] > 0.6 * (words - 1) * STEP, arrivals
            assert arrivals[0] < 0.6 * arrivals[-1], arrivals


def test_the_listening_socket_turns_nagle_off_on_every_connection():
    """asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP: the one
    `lamini serve` binds must say so."""
    from lamini_serve.serve.cli import _bind

    sock = _bind("127.0.0.1", 0)
    seen: list[int] = []

    async def main():
        def accepted(reader, writer):
            s = writer.get_extra_info("socket")
            seen.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()

    try:
        asyncio.run(main())
    finally:
        sock.close()
    assert seen and seen[0] != 0


def test_the_server_runs_on_uvloop_where_it_is_installed():
    import pytest

    uvloop = pytest.importorskip("uvloop")
    from lamini_serve.serve.cli import _event_loop_run

    kinds = []

    async def which():
        kinds.append(type(asyncio.get_running_loop()))

    _event_loop_run(which())
    assert kinds == [uvloop.Loop]
