"""What relaying costs `lamini serve`: CPU per relayed chunk and added time to first token.

    python benchmarks/relay.py [--concurrency 1,8,32,64] [--tokens 64] [--step-ms 20]

An upstream OpenAI-compatible server (a separate process, aiohttp) streams exactly
`--tokens` chat chunks per request, one every `--step-ms` for all its streams at once,
the way a batched engine emits one token per row per step. The same load is sent to it
directly and through `lamini serve NAME=URL` (the relay every vLLM model goes
through), in alternating rounds. Reported: the gateway process's CPU time per relayed
chunk (user + system, from /proc), and the p50 time to first token of each path.

On a machine where the engine uses every core (vLLM on a CPU), the gateway's CPU is
taken from the engine: at T tokens/s, C microseconds per chunk cost T*C/1e6 of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402
from serve import load, start_lamini, stop  # noqa: E402

UPSTREAM = textwrap.dedent('''
    import asyncio, json, sys
    from aiohttp import web

    tokens, step = int(sys.argv[2]), float(sys.argv[3]) / 1000
    tick = None

    async def ticker(app):
        global tick
        tick = asyncio.Event()
        async def run():
            global tick
            while True:
                await asyncio.sleep(step)
                tick.set()
                tick = asyncio.Event()
        app["t"] = asyncio.ensure_future(run())

    async def chat(request):
        body = await request.json()
        n = body.get("max_tokens") or tokens
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": "up", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        for i in range(n):
            await tick.wait()
            delta = {"content": " word"} if i else {"role": "assistant", "content": " word"}
            await resp.write(("data: " + json.dumps({**base, "choices": [{"index": 0, "delta": delta,
                              "finish_reason": "length" if i == n - 1 else None}]}) + "\\n\\n").encode())
        usage = {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}
        await resp.write(("data: " + json.dumps({**base, "choices": [], "usage": usage}) + "\\n\\n").encode())
        await resp.write(b"data: [DONE]\\n\\n")
        await resp.write_eof()
        return resp

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "up", "object": "model", "created": 0,
                                                               "owned_by": "bench", "max_model_len": 2048}]})

    app = web.Application()
    app.on_startup.append(ticker)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
''')


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_up(url: str) -> None:
    import httpx

    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (await client.get(url + "/models")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} never answered")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--step-ms", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "upstream.py"
        script.write_text(UPSTREAM)
        port = free_port()
        upstream = subprocess.Popen([sys.executable, str(script), str(port), str(args.tokens), str(args.step_ms)])
        direct = f"http://127.0.0.1:{port}/v1"
        rows, data = [], []
        try:
            asyncio.run(wait_up(direct))
            gw, url = start_lamini([f"up={direct}#up"], Path(tmp) / "serve.log")
            try:
                asyncio.run(wait_up(url + "/v1"))
                for c in [int(x) for x in args.concurrency.split(",")]:
                    a, b, cpu, chunks = [], [], 0.0, 0
                    for _ in range(args.rounds):
                        a.append(asyncio.run(load(direct, "up", c, max(c, 8), args.tokens)))
                        before = cpu_seconds(gw.pid)
                        b.append(asyncio.run(load(url + "/v1", "up", c, max(c, 8), args.tokens)))
                        cpu += cpu_seconds(gw.pid) - before - 0.0
                        chunks += sum(r["tokens"] for r in b[-1]["samples"] if "tokens" in r) + b[-1]["requests"] * 3
                    ttft_a = sorted(x["ttft_p50_ms"] for x in a)[len(a) // 2]
                    ttft_b = sorted(x["ttft_p50_ms"] for x in b)[len(b) // 2]
                    errors = sum(x["errors"] for x in a + b)
                    # the warm-up request of each round is relayed too: 4 tokens + 3 other chunks
                    chunks += args.rounds * 7
                    us = 1e6 * cpu / chunks
                    data.append({"concurrency": c, "gateway_cpu_us_per_chunk": us, "ttft_p50_direct_ms": ttft_a,
                                 "ttft_p50_gateway_ms": ttft_b, "errors": errors})
                    rows.append((f"c={c:<3}", f"gateway CPU {us:6.0f} us/chunk   TTFT p50 direct {ttft_a:6.1f} ms, "
                                              f"through lamini serve {ttft_b:6.1f} ms (+{ttft_b - ttft_a:.1f})  "
                                              f"errors {errors}"))
                    print(rows[-1][1], flush=True)
            finally:
                stop(gw)
        finally:
            upstream.terminate()
            upstream.wait(10)
    report("relay", f"lamini serve's relay ({args.tokens} chunks a request, one every {args.step_ms:g} ms)", rows,
           {"tokens": args.tokens, "step_ms": args.step_ms, "results": data}, args.out)


if __name__ == "__main__":
    main()
