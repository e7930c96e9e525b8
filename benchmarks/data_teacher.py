"""The in-process teacher of `lamini data` on each runtime: seconds to answer the same instructions.

    python benchmarks/data_teacher.py [--data runs/data] [--answers 64] [--batch-size 32]

Answers the first --answers instructions of a `lamini data run` folder the way the data
stage does (its answer payload: greedy, up to 128 tokens, repetition penalty 1.1, batches
of --batch-size), with the embedded teacher on PyTorch fp32 and with its ONNX export
(fp32 and int8 graphs; exported once into LAMINI_HOME/bench/teacher-onnx). Reports the
seconds, answers/s, and how many answers equal PyTorch's. Prints a table, writes
benchmarks/results/data_teacher.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import bench_teacher_export, report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/data", help="A `lamini data run` folder: its instructions are answered.")
    ap.add_argument("--answers", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_teacher.json"))
    args = ap.parse_args()

    from lamini_serve.data.pipeline import DataConfig, response_payload
    from lamini_serve.teacher.backends import InProcessTeacher
    from lamini_serve.teacher.client import Request
    from lamini_serve.train.data import load_pairs

    instructions = [p["instruction"] for p in load_pairs(args.data)][:args.answers]
    export = bench_teacher_export()
    runs = [("PyTorch fp32", "embedded", None), ("ONNX Runtime fp32", str(export), "fp32"),
            ("ONNX Runtime int8", str(export), "int8")]
    results: dict = {"data": args.data, "answers": len(instructions), "batch_size": args.batch_size, "runs": {}}
    rows, reference = [], None
    for label, name, variant in runs:
        teacher = InProcessTeacher(name, batch_size=args.batch_size, device="cpu", variant=variant)
        cfg = DataConfig(out=args.data)
        reqs = [Request(str(i), "chat", response_payload(t, cfg, teacher)) for i, t in enumerate(instructions)]
        teacher.engine  # loaded before the clock starts
        got: dict[str, str] = {}
        t0 = time.perf_counter()
        teacher.run(reqs, lambda r: got.__setitem__(r.key, r.completion.text))
        seconds = time.perf_counter() - t0
        texts = [got[r.key] for r in reqs]
        reference = reference or texts
        same = sum(a == b for a, b in zip(texts, reference))
        results["runs"][label] = {"teacher_id": teacher.id, "seconds": round(seconds, 1),
                                  "answers_per_s": round(len(texts) / seconds, 2), "same_as_pytorch": same}
        rows.append((label, f"{seconds:.1f} s, {len(texts) / seconds:.2f} answers/s, "
                            f"{same}/{len(texts)} the same as PyTorch's ({teacher.id})"))
        print(f"  {label}: {rows[-1][1]}", flush=True)
    report("data_teacher", "teacher runtime", rows, results, args.out)


if __name__ == "__main__":
    main()
