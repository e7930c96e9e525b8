"""Interrupt `lamini quickstart --tiny` in each stage in turn, rerun it, and compare the end
result with an uninterrupted run.

    python scripts/quickstart_interrupts.py --work runs/qs-interrupts

Each round starts `lamini quickstart --tiny --yes --no-ui --out WORK/interrupted`, waits until
the stage it is aiming at has started (its "lamini quickstart: STAGE ..." line) and has run for
--after seconds, and sends Ctrl-C (SIGINT to the process group, as a terminal does). The next
round aims at the next stage; the last round runs to the end. A reference run goes into
WORK/reference. Prints a table and writes WORK/interrupts.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

STAGES = ("data", "train", "export", "eval", "speed")


def quickstart(out: Path, aim: str | None, after: float) -> dict:
    cmd = [sys.executable, "-m", "lamini_serve", "quickstart", "--tiny", "--yes", "--no-ui", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's job
    lines: list[str] = []  # stderr, read by a thread so that the wait below never blocks on the pipe
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    t_aim = None
    while proc.poll() is None:
        if aim and t_aim is None and any(line.startswith(f"lamini quickstart: {aim} ...") for line in list(lines)):
            t_aim = time.monotonic()
        if t_aim is not None and time.monotonic() - t_aim >= after:
            os.killpg(proc.pid, signal.SIGINT)
            break
        time.sleep(0.2)
    proc.wait(300)
    reader.join(10)
    tail = [line.strip() for line in lines if line.strip()][-1:]
    return {"aim": aim, "interrupted": t_aim is not None, "returncode": proc.returncode, "tail": tail}


def result(out: Path) -> dict:
    summ = json.loads((out / "summary.json").read_text())
    import pyarrow.parquet as pq

    rows = pq.read_metadata(out / "data" / "dataset.parquet").num_rows
    herd = json.loads((out / "herd" / "herd.json").read_text())
    rep = json.loads((out / "eval" / "report.json").read_text())
    return {"models": [r["model"] for r in summ["rows"]], "dataset_rows": rows,
            "students": [s["name"] for s in herd["students"]],
            "steps": {s["name"]: s["training"].get("steps") for s in herd["students"]},
            "scored": sorted((m, t) for m, ts in rep["scores"].items() for t in ts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/qs-interrupts")
    ap.add_argument("--after", type=float, default=8.0, help="Seconds into the aimed stage before Ctrl-C.")
    args = ap.parse_args()
    work = Path(args.work)
    rounds = [quickstart(work / "interrupted", aim, args.after) for aim in STAGES]
    rounds.append(quickstart(work / "interrupted", None, 0))
    quickstart(work / "reference", None, 0)
    a, b = result(work / "interrupted"), result(work / "reference")
    for r in rounds:
        print(f"{str(r['aim']):<8} interrupted={r['interrupted']!s:<5} exit={r['returncode']:<4} {' '.join(r['tail'])[:90]}")
    same = {k: a[k] == b[k] for k in a}
    print("same as the uninterrupted run:", same)
    (work / "interrupts.json").write_text(json.dumps({"rounds": rounds, "interrupted": a, "reference": b,
                                                      "same": same}, indent=1))


if __name__ == "__main__":
    main()
