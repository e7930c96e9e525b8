"""Training throughput of a decoder-only student: packing against the Trainer's default.

    python benchmarks/train.py [--dataset runs/data] [--layers 6] [--steps 6]

Counts real (non-padding) tokens per second over the same number of optimizer
steps. "default" is what the transformers Trainer does with a plain collator:
examples in random order, each batch padded to its longest example. "packed" is
lamini-serve's: several examples per row, kept apart by a block-diagonal mask.
The student is cut from the embedded teacher (6 of its 30 layers by default), on
the data `lamini data run` made. Target: packing at least 2x. Prints a table,
writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_mib, report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="runs/data")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    from lamini_serve.models import ModelSpec
    from lamini_serve.train.data import CausalCollator, encode_causal, load_pairs, pack
    from lamini_serve.train.students import student_from_teacher

    torch.manual_seed(0)
    tspec = ModelSpec.resolve("embedded")
    tok = tspec.load_tokenizer()
    teacher = tspec.load_model(device="cpu", dtype="float32")
    model, _ = student_from_teacher(teacher, args.layers)
    del teacher
    examples = encode_causal(load_pairs(args.dataset), tspec, tok, args.max_length)
    collate = CausalCollator(pad_id=tok.pad_token_id)
    results = {}
    for mode in ("default", "packed"):
        rows = pack(examples, args.max_length) if mode == "packed" else random.Random(0).sample(examples, len(examples))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        model.train()
        real = padded = 0
        steps = 0
        t0 = None
        i = 0
        while steps < args.steps + 1:  # the first step warms up and is not timed
            batch_rows = [rows[(i + k) % len(rows)] for k in range(args.batch)]
            i += args.batch
            batch = collate(batch_rows)
            loss = model(**batch).loss
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
        results[mode] = {"real_tokens_per_second": round(real / dt, 1), "padding_share": round(1 - real / padded, 3),
                         "seconds": round(dt, 1), "steps": args.steps, "rows": len(rows)}
    speedup = results["packed"]["real_tokens_per_second"] / results["default"]["real_tokens_per_second"]
    data = {"student": f"embedded teacher cut to {args.layers} layers", "batch": args.batch, "max_length": args.max_length,
            "examples": len(examples), **results, "packing_speedup": round(speedup, 2), "peak_rss_mib": round(peak_rss_mib(), 1),
            "target_speedup": 2.0}
    report("train", f"training throughput, {args.layers}-layer student, batch {args.batch}", [
        ("default: real tokens/s (padding share)", f"{results['default']['real_tokens_per_second']} ({results['default']['padding_share']:.0%})"),
        ("packed: real tokens/s (padding share)", f"{results['packed']['real_tokens_per_second']} ({results['packed']['padding_share']:.0%})"),
        ("packing speedup", f"{speedup:.2f}x (target >= 2x)"),
        ("peak memory (MiB)", f"{peak_rss_mib():.0f}"),
    ], data, args.out)


if __name__ == "__main__":
    main()
