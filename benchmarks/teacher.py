"""The embedded teacher on this machine: load time, and tokens/s at batch 1.

    python benchmarks/teacher.py [--new-tokens 64] [--repeats 3]

Prints a table and writes benchmarks/results/teacher.json. Greedy decoding, torch
fp32 on the CPU (or the device given), the teacher's chat prompt, the new
tokens forced to exactly --new-tokens (no early stop) so runs compare.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

PROMPTS = [
    "Give three tips for staying healthy.",
    "Explain what a neural network is to a ten-year-old.",
    "Write a short email inviting a colleague to lunch.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "teacher.json"))
    args = ap.parse_args()

    import torch

    from lamini_serve.engines.torch_engine import TorchEngine
    from lamini_serve.teacher.embedded import resolve_model
    from lamini_serve.prompts import conversation
    from lamini_serve.teacher.embedded import teacher_dir

    teacher_dir(pull=True)  # pulling is not part of the load time
    t0 = time.perf_counter()
    engine = TorchEngine(resolve_model("embedded"), device=args.device, dtype="float32")
    load_s = time.perf_counter() - t0

    def run(prompt: str) -> float:
        enc = engine.encode([conversation(prompt)])
        t = time.perf_counter()
        with torch.inference_mode():
            out = engine.model.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                        do_sample=False, pad_token_id=engine.tokenizer.pad_token_id)
        dt = time.perf_counter() - t
        assert out.shape[1] - enc["input_ids"].shape[1] == args.new_tokens
        return args.new_tokens / dt

    run(PROMPTS[0])  # warm-up
    rates = [run(PROMPTS[i % len(PROMPTS)]) for i in range(args.repeats)]
    result = {
        "benchmark": "teacher",
        "model": "SmolLM2-135M-Instruct (embedded)",
        "device": args.device,
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "load_seconds": round(load_s, 2),
        "batch": 1,
        "new_tokens": args.new_tokens,
        "tokens_per_second_median": round(statistics.median(rates), 2),
        "tokens_per_second_all": [round(r, 2) for r in rates],
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version.split()[0],
                    "torch": torch.__version__},
    }
    rows = [("load time (s)", f"{load_s:.2f}"),
            (f"tok/s, batch 1, {args.new_tokens} greedy new tokens (median of {args.repeats})",
             f"{result['tokens_per_second_median']:.1f}")]
    width = max(len(r[0]) for r in rows)
    print(f"{'embedded teacher, torch fp32 on ' + args.device:<{width}}  value")
    for name, val in rows:
        print(f"{name:<{width}}  {val}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
