"""`lamini serve` against vLLM, on the embedded teacher: throughput and latency by concurrency.

    python benchmarks/serve.py [--concurrency 1,8,32,64] [--tokens 64] [--only a,b,c,d,e]
    python benchmarks/serve.py --load [--requests 500] [--concurrency 64]

Each configuration serves the embedded teacher (SmolLM2-135M-Instruct) and receives
streamed chat requests of exactly `--tokens` new tokens (`ignore_eos`), `concurrency`
at a time (as many requests as the concurrency, at least 8), from an async client in
this process:

  (a) vllm        vLLM's own OpenAI server, called directly (the reference), at each
                  of --vllm-dtypes (float32, bfloat16); the fastest is (a) and (b)'s dtype
  (b) gateway     the same vLLM server called through `lamini serve`, which relays to it
                  (NAME=URL; a vLLM that lamini starts is relayed by the same code), in
                  rounds alternating with (a)
  (c) onnx-int8   `lamini serve` on the teacher's int8 export (continuous batching)
  (d) torch       `lamini serve` on the torch engine (requests batched)
  (e) torch-1     the torch engine one request at a time (--max-batch 1)

Targets: (b) >= 95% of (a)'s throughput at every concurrency and <= 5 ms more p50
time to first token; (c) at concurrency 32 at least as fast as (a); (d) at
concurrency 32 at least 3x (e). Prints a table, writes benchmarks/results/serve.json
and serve.png.

`--load` sends `--requests` streamed chat requests at `--concurrency` to `lamini serve`
on a tiny random model (onnx engine) and reports errors and the server's resident
memory after each fifth of them: the acceptance is zero errors and flat memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, bench_teacher_export, report  # noqa: E402

PROMPT = "Write a short story about a robot who learns to paint."
CONFIGS = {
    "a": "vllm",
    "b": "gateway",
    "c": "onnx-int8",
    "d": "torch",
    "e": "torch-1",
}


# ---- servers ---------------------------------------------------------------------
def start_lamini(args: list[str], log_path: Path, env: dict | None = None, timeout: float = 900) -> tuple[subprocess.Popen, str]:
    """`lamini serve ... --port 0`; returns the process and its base URL once it listens."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "lamini_serve", "serve", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=dict(os.environ, **(env or {})),
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"lamini serve exited early; see {log_path}")
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            return proc, m.group(1).rstrip("/").removesuffix("/v1")
    raise SystemExit(f"lamini serve did not start in {timeout} s; see {log_path}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def wait_healthy(url: str, timeout: float = 900, key: str | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                r = await client.get(url.rsplit("/v1", 1)[0] + "/health", timeout=5)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1)
    raise SystemExit(f"{url} never became healthy")


# ---- the load -------------------------------------------------------------------
async def one_request(client, url: str, model: str, tokens: int, key: str | None) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
            "ignore_eos": True, "min_tokens": tokens}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    start = time.perf_counter()
    first = None
    usage = None
    async with client.stream("POST", url + "/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            return {"error": f"{r.status_code}: {(await r.aread())[:200]!r}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if first is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter()
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "latency": end - start,
            "tokens": (usage or {}).get("completion_tokens", 0)}


async def load(url: str, model: str, concurrency: int, requests: int, tokens: int, key: str | None = None,
               on_done=None) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    results: list[dict] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as client:
        await one_request(client, url, model, 4, key)  # warm up
        queue = list(range(requests))

        async def worker():
            while queue:
                queue.pop()
                try:
                    res = await one_request(client, url, model, tokens, key)
                except Exception as exc:  # a dropped connection is an error of the server under test
                    res = {"error": repr(exc)[:200]}
                results.append(res)
                if on_done:
                    on_done(len(results))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return summarize(concurrency, results, wall)


def summarize(concurrency: int, results: list[dict], wall: float) -> dict:
    """Throughput and latency percentiles of a round (or of rounds pooled: their results and summed walls)."""
    requests = len(results)
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]

    def pct(values, q):
        return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else (values[0] if values else float("nan"))

    return {
        "concurrency": concurrency, "requests": requests, "errors": len(errors), "first_errors": errors[:3],
        "tokens": sum(r["tokens"] for r in ok), "wall_s": wall,
        "tok_per_s": sum(r["tokens"] for r in ok) / wall if wall else 0.0,
        "ttft_p50_ms": 1000 * pct([r["ttft"] for r in ok], 50), "ttft_p95_ms": 1000 * pct([r["ttft"] for r in ok], 95),
        "latency_p50_s": pct([r["latency"] for r in ok], 50), "latency_p95_s": pct([r["latency"] for r in ok], 95),
        "samples": results,
    }


def pooled(rounds: list[dict]) -> dict:
    return summarize(rounds[0]["concurrency"], [x for r in rounds for x in r["samples"]],
                     sum(r["wall_s"] for r in rounds))


# ---- the benchmark --------------------------------------------------------------------
def vllm_direct(work: Path, dtype: str):
    """vLLM's own server on the teacher, started the way `lamini serve` starts it."""
    from lamini_serve.engines.setup import vllm_python
    from lamini_serve.engines.vllm import VllmEngine
    from lamini_serve.teacher.embedded import resolve_model

    python = vllm_python()
    if not python:
        raise SystemExit("no vLLM environment: run `lamini setup vllm` first (or --only c,d,e)")
    return VllmEngine("teacher", resolve_model("embedded"), python, log_dir=work / dtype, dtype=dtype)


VLLM_DTYPES = ("float32", "bfloat16")


def vllm_pair(concurrencies: list[int], tokens: int, work: Path, dtype: str, rounds: int,
              with_gateway: bool) -> tuple[list[dict], list[dict]]:
    """(a) and (b) on one vLLM server: (a) calls it directly, (b) through `lamini serve`
    relaying to it (`teacher=URL#teacher`, the path every vLLM model takes through the
    gateway), in alternating rounds, so that only the gateway differs."""
    engine = vllm_direct(work, dtype)
    direct: list[dict] = []
    gated: list[dict] = []

    async def go():
        await engine.start()
        try:
            while engine.state != "ready":
                if engine.state == "failed":
                    raise SystemExit(f"vLLM failed to start; see {work}")
                await asyncio.sleep(1)
            proc = url = None
            if with_gateway:
                proc, url = await asyncio.to_thread(
                    start_lamini, [f"teacher={engine.url}/v1#teacher"], work / f"serve-b-{dtype}.log",
                    {"LAMINI_UPSTREAM_API_KEY": engine.api_key})
                await wait_healthy(url)
            try:
                for c in concurrencies:
                    a_rounds, b_rounds = [], []
                    for _ in range(rounds):
                        a_rounds.append(await load(engine.url + "/v1", "teacher", c, max(c, 8), tokens, engine.api_key))
                        if with_gateway:
                            b_rounds.append(await load(url + "/v1", "teacher", c, max(c, 8), tokens))
                    direct.append({**pooled(a_rounds), "dtype": dtype})
                    line = f"  vllm {dtype} c={c}: (a) {direct[-1]['tok_per_s']:.1f} tok/s"
                    if with_gateway:
                        gated.append({**pooled(b_rounds), "dtype": dtype})
                        line += f", (b) {gated[-1]['tok_per_s']:.1f} tok/s"
                    print(line, flush=True)
            finally:
                if proc is not None:
                    stop(proc)
        finally:
            await engine.aclose()

    asyncio.run(go())
    return direct, gated


def run_config(key: str, concurrencies: list[int], tokens: int, work: Path) -> list[dict]:
    rows = []
    args = {
        "c": [f"teacher={bench_teacher_export()}", "--engine", "teacher=onnx"],
        "d": ["teacher=embedded", "--engine", "teacher=torch"],
        "e": ["teacher=embedded", "--engine", "teacher=torch", "--max-batch", "1"],
    }[key]
    proc, url = start_lamini(args, work / f"serve-{key}.log")
    try:
        asyncio.run(wait_healthy(url))
        for c in concurrencies:
            rows.append(asyncio.run(load(url + "/v1", "teacher", c, max(c, 8), tokens)))
            print(f"  ({key}) {CONFIGS[key]} c={c}: {rows[-1]['tok_per_s']:.1f} tok/s", flush=True)
    finally:
        stop(proc)
    return rows


def targets(results: dict[str, list[dict]]) -> list[tuple[str, bool | None]]:
    def at(key, c):
        return next((r for r in results.get(key, []) if r["concurrency"] == c), None)

    out = []
    for c in sorted({r["concurrency"] for r in results.get("a", [])}):
        a, b = at("a", c), at("b", c)
        if a and b:
            out.append((f"(b) >= 95% of (a) tok/s at c={c}", b["tok_per_s"] >= 0.95 * a["tok_per_s"]))
            out.append((f"(b) p50 TTFT <= (a) + 5 ms at c={c}", b["ttft_p50_ms"] <= a["ttft_p50_ms"] + 5))
    a32, c32, d32, e32 = at("a", 32), at("c", 32), at("d", 32), at("e", 32)
    if a32 and c32:
        out.append(("(c) >= (a) tok/s at c=32", c32["tok_per_s"] >= a32["tok_per_s"]))
    if d32 and e32:
        out.append(("(d) >= 3x (e) tok/s at c=32", d32["tok_per_s"] >= 3 * e32["tok_per_s"]))
    return out


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, rows in results.items():
        if not rows:
            continue
        cs = [r["concurrency"] for r in rows]
        left.plot(cs, [r["tok_per_s"] for r in rows], marker="o", label=f"({key}) {CONFIGS[key]}")
        right.plot(cs, [r["ttft_p50_ms"] for r in rows], marker="o", label=f"({key}) {CONFIGS[key]}")
    left.set(xscale="log", xlabel="concurrent requests", ylabel="tokens/s", title="Throughput (64 new tokens)")
    right.set(xscale="log", yscale="log", xlabel="concurrent requests", ylabel="ms", title="p50 time to first token")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def rss_mib(pid: int) -> float:
    total = 0.0
    for p in [pid] + children(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def children(pid: int) -> list[int]:
    try:
        kids = [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in children(k)]


def load_test(requests: int, concurrency: int, tokens: int, out: str | None) -> None:
    from lamini_serve.testing import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tiny = make_tiny_model("llama", Path(tmp) / "tiny")
        onnx = Path(tmp) / "tiny-onnx"
        subprocess.run([sys.executable, "-m", "lamini_serve", "export", str(tiny), str(onnx)], check=True,
                       capture_output=True)
        proc, url = start_lamini([f"tiny={onnx}", "--max-batch", str(concurrency)], Path(tmp) / "serve.log")
        try:
            memory: list[tuple[int, float]] = [(0, rss_mib(proc.pid))]
            step = max(1, requests // 5)

            def on_done(n):
                if n % step == 0:
                    memory.append((n, rss_mib(proc.pid)))

            res = asyncio.run(load(url + "/v1", "tiny", concurrency, requests, tokens, on_done=on_done))
            res.pop("samples")
        finally:
            stop(proc)
    growth = memory[-1][1] - memory[1][1] if len(memory) > 2 else float("nan")
    rows = [("requests", str(res["requests"])), ("concurrency", str(concurrency)), ("errors", str(res["errors"])),
            ("tokens/s", f"{res['tok_per_s']:.0f}"), ("p95 latency", f"{res['latency_p95_s']:.2f} s")]
    rows += [(f"server RSS after {n}", f"{m:.0f} MiB") for n, m in memory]
    rows.append(("RSS growth after the first fifth", f"{growth:+.0f} MiB"))
    report("serve_load", "lamini serve load test", rows, {"result": res, "memory_mib": memory, "growth_mib": growth}, out)
    if res["errors"] or growth > 50:
        raise SystemExit(f"load test failed: {res['errors']} errors, memory grew {growth:+.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--only", default="a,b,c,d,e", help="which configurations (letters)")
    ap.add_argument("--load", action="store_true", help="the load test instead (500 requests at 64)")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--vllm-dtypes", default=",".join(VLLM_DTYPES),
                    help="(a) runs vLLM at each; the fastest is the reference and what (b) uses")
    ap.add_argument("--rounds", type=int, default=2, help="(a)/(b): alternating rounds per concurrency, pooled")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.load:
        return load_test(args.requests, concurrencies[-1], args.tokens, args.out)
    results: dict[str, list[dict]] = {}
    by_dtype: dict[str, list[dict]] = {}
    dtype = "float32"
    with tempfile.TemporaryDirectory() as tmp:
        keys = args.only.split(",")
        if "a" in keys or "b" in keys:
            # vLLM at each dtype it runs on this CPU: the fastest is the reference (a), and (b) is measured on it
            gated: dict[str, list[dict]] = {}
            for d in args.vllm_dtypes.split(","):
                print(f"(a)/(b) vllm --dtype {d} ...", flush=True)
                by_dtype[d], gated[d] = vllm_pair(concurrencies, args.tokens, Path(tmp), d, args.rounds, "b" in keys)
            dtype = max(by_dtype, key=lambda d: sum(r["tok_per_s"] for r in by_dtype[d]))
            results["a"] = by_dtype[dtype]
            if "b" in keys:
                results["b"] = gated[dtype]
        for key in keys:
            if key in ("a", "b"):
                continue
            print(f"({key}) {CONFIGS[key]} ...", flush=True)
            results[key] = run_config(key, concurrencies, args.tokens, Path(tmp))
    rows = []
    for rs in results.values():
        for r in rs:
            r.pop("samples", None)
    for rs in by_dtype.values():
        for r in rs:
            r.pop("samples", None)
    for d, rs in by_dtype.items():
        rows.append((f"    vllm --dtype {d}", "  ".join(f"c={r['concurrency']}: {r['tok_per_s']:.1f}" for r in rs)
                     + (" tok/s  <- (a), (b)" if d == dtype else " tok/s")))
    for key, rs in results.items():
        for r in rs:
            rows.append((f"({key}) {CONFIGS[key]:<9} c={r['concurrency']:<3}",
                         f"{r['tok_per_s']:7.1f} tok/s  TTFT p50 {r['ttft_p50_ms']:7.0f} ms p95 {r['ttft_p95_ms']:7.0f} ms  "
                         f"latency p50 {r['latency_p50_s']:6.2f} s p95 {r['latency_p95_s']:6.2f} s  errors {r['errors']}"))
    checks = targets(results)
    rows += [(name, "met" if ok else "MISSED") for name, ok in checks]
    png = Path(args.out).with_suffix(".png") if args.out else RESULTS / "serve.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(results, png)
    report("serve", "lamini serve vs vLLM (embedded teacher)", rows,
           {"tokens": args.tokens, "vllm_dtype": dtype, "vllm_by_dtype": by_dtype, "results": results,
            "targets": dict(checks), "plot": str(png)}, args.out)


if __name__ == "__main__":
    main()
