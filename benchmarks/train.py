"""Training throughput of a decoder-only student: lamini-serve's path against the Trainer's default.

    python benchmarks/train.py [--dataset runs/data] [--layers 6] [--steps 6]

Counts real (non-padding) tokens per second over the same number of optimizer
steps, each mode in its own process (so that each has its own peak memory):

- default: what the transformers Trainer does with a plain collator: examples in
  random order, each batch padded to its longest example, the model's own loss
  (lm_head and softmax at every position);
- packed: several examples per row, kept apart by a block-diagonal mask;
- packed + answer-only logits: lamini-serve's default, the lm_head and the loss on
  the answer positions only (the same loss and gradients, see train/loss.py).

The student is cut from the embedded teacher (6 of its 30 layers by default), on
the data `lamini data run` made. Target: at least 2x the default. Prints a table,
writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_mib, report  # noqa: E402

MODES = {"default": (False, False), "packed": (True, False), "packed + answer-only logits": (True, True)}


def run_mode(args, mode: str) -> dict:
    import torch

    from lamini_serve.models import ModelSpec
    from lamini_serve.train.data import CausalCollator, encode_causal, load_pairs, pack
    from lamini_serve.train.loss import answer_only_loss
    from lamini_serve.train.students import student_from_teacher

    packing, answer_only = MODES[mode]
    torch.manual_seed(0)
    tspec = ModelSpec.resolve("embedded")
    tok = tspec.load_tokenizer()
    teacher = tspec.load_model(device="cpu", dtype="float32")
    model, _ = student_from_teacher(teacher, args.layers)
    del teacher
    examples = encode_causal(load_pairs(args.dataset), tspec, tok, args.max_length)
    collate = CausalCollator(pad_id=tok.pad_token_id)
    rows = pack(examples, args.max_length) if packing else random.Random(0).sample(examples, len(examples))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    real = padded = 0
    steps = i = 0
    t0 = None
    while steps < args.steps + 1:  # the first step warms up and is not timed
        batch_rows = [rows[(i + k) % len(rows)] for k in range(args.batch)]
        i += args.batch
        batch = collate(batch_rows)
        loss = answer_only_loss(model, batch) if answer_only else model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if steps == 0:
            t0 = time.perf_counter()
        else:
            real += sum(len(r["input_ids"]) for r in batch_rows)
            padded += batch["input_ids"].numel()
        steps += 1
    dt = time.perf_counter() - t0
    return {"real_tokens_per_second": round(real / dt, 1), "padding_share": round(1 - real / padded, 3),
            "seconds": round(dt, 1), "steps": args.steps, "rows": len(rows), "examples": len(examples),
            "peak_rss_mib": round(peak_rss_mib(), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="runs/data")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default=None)
    ap.add_argument("--mode", choices=list(MODES), help=argparse.SUPPRESS)  # internal: one mode, JSON to stdout
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args, args.mode)))
        return

    results = {}
    for mode in MODES:
        print(f"measuring {mode} ...", flush=True)
        cmd = [sys.executable, __file__, "--mode", mode, "--dataset", args.dataset, "--layers", str(args.layers),
               "--batch", str(args.batch), "--max-length", str(args.max_length), "--steps", str(args.steps)]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
    base = results["default"]["real_tokens_per_second"]
    speedups = {m: round(r["real_tokens_per_second"] / base, 2) for m, r in results.items()}
    best = "packed + answer-only logits"
    data = {"student": f"embedded teacher cut to {args.layers} layers", "batch": args.batch,
            "max_length": args.max_length, "modes": results, "speedup_vs_default": speedups,
            "packing_speedup": speedups["packed"], "target_speedup": 2.0,
            "target_met": speedups[best] >= 2.0}
    rows = [(f"{m}: real tokens/s (padding share, peak RSS)",
             f"{r['real_tokens_per_second']} ({r['padding_share']:.0%}, {r['peak_rss_mib']:.0f} MiB), "
             f"{speedups[m]:.2f}x default") for m, r in results.items()]
    rows.append(("target: lamini-serve's default >= 2x the Trainer's", "met" if data["target_met"] else "MISSED"))
    report("train", f"training throughput, {args.layers}-layer student, batch {args.batch}", rows, data, args.out)


if __name__ == "__main__":
    main()
