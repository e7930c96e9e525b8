"""How many arena votes and A-D grades per second the `lamini ui` database takes from many
people at once, and how long the leaderboard takes to compute.

    python benchmarks/ui_store.py [--threads 16] [--votes 200] [--rounds 1000]

Each thread is one voter with its own connection, as the page's workers are; every
fourth vote is sent twice (a double click). Afterwards the rows are counted: none
may be lost or doubled. Then `lamini ui report` is timed on those votes.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import report  # noqa: E402
from lamini_serve.ui.ranking import write_report  # noqa: E402
from lamini_serve.ui.store import Store, Vote  # noqa: E402

MODELS = ["teacher", "smol-12l", "smol-6l", "smol-6l-int8", "t5-tiny"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--votes", type=int, default=200, help="votes per thread")
    ap.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds of the report")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lamini-ui-bench-"))
    store = Store(work / "votes.db")
    conv = [{"role": "user", "content": "Give three tips for staying healthy."},
            {"role": "assistant", "content": "1. Sleep. 2. Eat well. 3. Move. " * 20}]
    barrier = threading.Barrier(args.threads + 1)

    def voter(t: int) -> None:
        rng = random.Random(t)
        barrier.wait()
        for i in range(args.votes):
            a, b = rng.sample(MODELS, 2)
            v = Vote(f"{t}-{i}", a, b, rng.choice(["model_a", "model_b", "tie", "both_bad"]), conv, conv,
                     {"temperature": 0.7}, f"rater{t}", f"s{t}")
            store.add_vote(v)
            if i % 4 == 0:
                store.add_vote(v)
            store.rate("builtin", f"u{i % 72:03d}", a, f"rater{t}", rng.choice("ABCD"), instruction="i",
                       answer="a", settings={}, session=f"s{t}")

    threads = [threading.Thread(target=voter, args=(t,)) for t in range(args.threads)]
    for th in threads:
        th.start()
    barrier.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t0
    votes, ratings = len(store.votes()), len(store.ratings())
    writes = args.threads * args.votes * 2 + args.threads * ((args.votes + 3) // 4)
    t1 = time.perf_counter()
    write_report(store, work / "report", rounds=args.rounds)
    report_s = time.perf_counter() - t1
    store.close()
    rows = [
        ("threads x votes each", f"{args.threads} x {args.votes}"),
        ("votes stored (expected)", f"{votes} ({args.threads * args.votes})"),
        ("grades stored (one per rater, item, model)", str(ratings)),
        ("writes, incl. doubled votes", str(writes)),
        ("wall time", f"{elapsed:.2f} s"),
        ("writes per second", f"{writes / elapsed:.0f}"),
        (f"report ({args.rounds} bootstrap rounds)", f"{report_s:.2f} s"),
    ]
    report("ui_store", "lamini ui database, many voters at once", rows,
           {"threads": args.threads, "votes_per_thread": args.votes, "votes": votes, "ratings": ratings,
            "writes": writes, "seconds": elapsed, "writes_per_s": writes / elapsed, "report_s": report_s,
            "rounds": args.rounds}, args.out)
    if votes != args.threads * args.votes:
        raise SystemExit(f"lost or doubled votes: {votes} stored, {args.threads * args.votes} sent")


if __name__ == "__main__":
    main()
