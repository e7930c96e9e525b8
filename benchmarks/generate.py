"""Throughput of the data pipeline's teacher stage against an OpenAI-compatible fake.

    python benchmarks/generate.py [--requests 4000] [--latency 0.2] [--concurrency 64]

The fake runs in its own process and answers every request after a fixed
latency, so the ideal is concurrency / latency requests per second (320/s at
the defaults). The pipeline stage is the real one (`run_teacher_stage`: async
client, limits, retries, progress, and a SQLite write per answer). Target: at
least 90% of the ideal. Also reports the CPU time this process spends per
request. Prints a table, writes benchmarks/results/generate.json.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from lamini_serve.data.pipeline import Counters, run_teacher_stage
    from lamini_serve.data.store import Store
    from lamini_serve.teacher.backends import HTTPTeacher
    from lamini_serve.teacher.client import Request

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "lamini_serve.testing.openai_server", "--port", str(port),
                               "--latency", str(args.latency)], stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()  # "serving ..."
        url = f"http://127.0.0.1:{port}/v1"
        requests = [Request(f"key-{i}", "chat", {"messages": [{"role": "user", "content": f"Explain idea number {i}."}],
                                                 "max_tokens": 64, "temperature": 0.0}) for i in range(args.requests)]
        teacher = HTTPTeacher(url, "fake", concurrency=args.concurrency)
        with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "store.sqlite") as store:
            def keep(res):
                c = res.completion
                store.add_response(res.key, "", c.text, teacher.id, {}, c.prompt_tokens, c.completion_tokens, None)

            # warm-up: connections, imports
            run_teacher_stage(teacher, requests[:args.concurrency], keep, store, "respond", Counters(), "warm-up", "req")
            t0, c0 = time.perf_counter(), time.process_time()
            run_teacher_stage(teacher, requests[args.concurrency:], keep, store, "respond", Counters(), "answers", "req")
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            stored = store.count("responses")
    finally:
        server.terminate()
        server.wait()
    n = args.requests - args.concurrency
    rps = n / wall
    ideal = args.concurrency / args.latency
    data = {"requests": n, "latency_s": args.latency, "concurrency": args.concurrency, "seconds": round(wall, 2),
            "requests_per_second": round(rps, 1), "ideal_requests_per_second": round(ideal, 1),
            "share_of_ideal": round(rps / ideal, 4), "cpu_ms_per_request": round(1000 * cpu / n, 3),
            "stored": stored, "target_share_of_ideal": 0.9}
    report("generate", f"teacher stage vs fake server ({args.latency * 1000:.0f} ms, concurrency {args.concurrency})", [
        ("requests per second", f"{rps:.1f} of ideal {ideal:.0f} ({100 * rps / ideal:.1f}%, target >= 90%)"),
        ("pipeline CPU time per request (ms)", f"{1000 * cpu / n:.3f}"),
        ("answers stored", f"{stored}"),
    ], data, args.out)


if __name__ == "__main__":
    main()
