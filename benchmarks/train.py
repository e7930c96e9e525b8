"""Training throughput of a decoder-only student: lamini-serve's path against the Trainer's default.

    python benchmarks/train.py [--dataset runs/data] [--layers 6] [--steps 6] [--precision auto|fp32|bf16|both]

Counts real (non-padding) tokens per second over the same number of optimizer
steps, each mode in its own process (so that each has its own peak memory):

- default: what the transformers Trainer does with a plain collator: examples in
  random order, each batch padded to its longest example, the model's own loss
  (lm_head and softmax at every position);
- packed: several examples per row, kept apart by a block-diagonal mask;
- packed + answer-only logits: lamini-serve's default, the lm_head and the loss on
  the answer positions only (the same loss and gradients, see train/loss.py).

Each mode runs in fp32 and, where the CPU multiplies bfloat16 in hardware (AVX-512
BF16 or AMX; `--precision auto`), again in bf16 mixed precision (autocast, as the
Trainer's `bf16=True`), which is what `lamini train` uses there by default
(`bf16: auto`). Speedups are against the Trainer's default at the same precision;
the last line sets lamini-serve's default on this machine against the Trainer's
out of the box (fp32).

It also prints the model's matmul work per real token (6 x parameters per position,
forward and backward; the head counted only where it runs): at equal precision the
speedup of each mode is about the work it saves.

The student is cut from the embedded teacher (6 of its 30 layers by default), on
the data `lamini data run` made. Target: lamini-serve's default at least 2x the
Trainer's default (its TrainingArguments: fp32), the last line. Prints a table,
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


def run_mode(args, mode: str, precision: str) -> dict:
    import contextlib

    import torch

    from lamini_serve.teacher.embedded import resolve_model
    from lamini_serve.train.data import IGNORE, CausalCollator, encode_causal, load_pairs, pack
    from lamini_serve.train.loss import answer_only_loss
    from lamini_serve.train.students import student_from_teacher

    packing, answer_only = MODES[mode]
    torch.manual_seed(0)
    tspec = resolve_model("embedded")
    tok = tspec.load_tokenizer()
    teacher = tspec.load_model(device="cpu", dtype="float32")
    model, _ = student_from_teacher(teacher, args.layers)
    del teacher
    examples = encode_causal(load_pairs(args.dataset), tspec, tok, args.max_length)
    collate = CausalCollator(pad_id=tok.pad_token_id)
    rows = pack(examples, args.max_length) if packing else random.Random(0).sample(examples, len(examples))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    # Matmul work, 6 x parameters per position (forward and backward): the blocks run at every
    # position, padding included; the head at every position, or only where an answer token is
    # predicted. Embedding lookups cost no multiply.
    head = model.get_output_embeddings().weight.numel()
    blocks = sum(p.numel() for p in model.model.layers.parameters())
    flops = 0
    real = padded = 0
    steps = i = 0
    t0 = None
    while steps < args.steps + 1:  # the first step warms up and is not timed
        batch_rows = [rows[(i + k) % len(rows)] for k in range(args.batch)]
        i += args.batch
        batch = collate(batch_rows)
        with (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()):
            loss = answer_only_loss(model, batch) if answer_only else model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if steps == 0:
            t0 = time.perf_counter()
        else:
            real += sum(len(r["input_ids"]) for r in batch_rows)
            padded += batch["input_ids"].numel()
            head_positions = int((batch["labels"][:, 1:] != IGNORE).sum()) if answer_only else batch["input_ids"].numel()
            flops += 6 * (blocks * batch["input_ids"].numel() + head * head_positions)
        steps += 1
    dt = time.perf_counter() - t0
    return {"real_tokens_per_second": round(real / dt, 1), "padding_share": round(1 - real / padded, 3),
            "model_mflop_per_real_token": round(flops / real / 1e6, 1), "seconds": round(dt, 1), "steps": args.steps, "rows": len(rows), "examples": len(examples),
            "peak_rss_mib": round(peak_rss_mib(), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="runs/data")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16", "both"], default="auto",
                    help="auto: fp32, and bf16 too where the CPU has native bfloat16")
    ap.add_argument("--out", default=None)
    ap.add_argument("--mode", choices=list(MODES), help=argparse.SUPPRESS)  # internal: one mode, JSON to stdout
    ap.add_argument("--one-precision", choices=["fp32", "bf16"], default="fp32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args, args.mode, args.one_precision)))
        return

    from lamini_serve.hardware import cpu_native_bf16

    native = cpu_native_bf16()
    precisions = {"auto": ["fp32", "bf16"] if native else ["fp32"], "both": ["fp32", "bf16"]}.get(
        args.precision, [args.precision])
    results: dict[str, dict] = {}
    for precision in precisions:
        for mode in MODES:
            print(f"measuring {mode}, {precision} ...", flush=True)
            cmd = [sys.executable, __file__, "--mode", mode, "--one-precision", precision, "--dataset", args.dataset,
                   "--layers", str(args.layers), "--batch", str(args.batch), "--max-length", str(args.max_length),
                   "--steps", str(args.steps)]
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            results[f"{mode}, {precision}"] = json.loads(out.strip().splitlines()[-1])
    tps = {k: r["real_tokens_per_second"] for k, r in results.items()}
    work = {k: r["model_mflop_per_real_token"] for k, r in results.items()}
    speedups = {f"{m}, {p}": round(tps[f"{m}, {p}"] / tps[f"default, {p}"], 2) for p in precisions for m in MODES}
    best = "packed + answer-only logits"
    # what `bf16: auto` picks on this machine (or the one precision asked for)
    ours = "bf16" if "bf16" in precisions and (native or "fp32" not in precisions) else "fp32"
    base = "default, fp32" if "fp32" in precisions else "default, bf16"
    overall = round(tps[f"{best}, {ours}"] / tps[base], 2)
    data = {"student": f"embedded teacher cut to {args.layers} layers", "batch": args.batch,
            "max_length": args.max_length, "cpu_native_bf16": native, "modes": results,
            "speedup_vs_default_same_precision": speedups,
            "work_ratio_vs_default": {m: round(work[base] / work[f"{m}, {precisions[0]}"], 2) for m in MODES},
            "lamini_default_precision": ours, "lamini_default_vs_trainer_default": overall,
            "target_speedup": 2.0, "target_met": overall >= 2.0}
    rows = [(f"{k}: real tokens/s (padding share, peak RSS)",
             f"{r['real_tokens_per_second']} ({r['padding_share']:.0%}, {r['peak_rss_mib']:.0f} MiB), "
             f"{speedups[k]:.2f}x default") for k, r in results.items()]
    rows += [(f"{m}: model MFLOP per real token (work saved)",
              f"{work[f'{m}, {precisions[0]}']} ({data['work_ratio_vs_default'][m]:.2f}x less)") for m in MODES]
    rows.append((f"lamini-serve's default here ({best}, {ours}) vs the Trainer's default ({base.split(', ')[1]})",
                 f"{overall:.2f}x"))
    rows.append(("target: >= 2x", "met" if data["target_met"] else "MISSED"))
    report("train", f"training throughput, {args.layers}-layer student, batch {args.batch}", rows, data, args.out)


if __name__ == "__main__":
    main()
