"""Export quality and speed: torch fp32 against ONNX Runtime fp32 and int8, side by side.

    python benchmarks/export.py [--model embedded] [--t5 runs/herd/t5-tiny] [--prompts 50] [--repeats 3]

Exports the model with `lamini export` (the defaults a user gets) into a scratch
folder, then measures in one run, on this machine: size on disk of the fp32 and
int8 graphs; parity with PyTorch over --prompts instructions (top-1 agreement
under teacher forcing along PyTorch's greedy continuation, exact match of the
first 32 greedy tokens, ROUGE-L of the two answers); and tokens/s at batch 1 and
8 for 64 greedy new tokens (median of --repeats). The same for a T5-style
student (--t5; skipped when the folder is missing: train it with
`lamini train lamini_serve/recipes/quickstart-cpu.yaml --student t5-tiny`).

Targets, for the embedded teacher at batch 1: ORT int8 at least 2.5x torch fp32,
int8 size at most 30% of fp32, top-1 agreement at least 95%.
Prints a table, writes benchmarks/results/export.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402


def measure(model: str, prompts: int, repeats: int, workdir: Path) -> dict:
    from lamini_serve.export.exporter import export_model
    from lamini_serve.export.parity import parity_report
    from lamini_serve.teacher.embedded import resolve_model

    out = workdir / "export"
    manifest = export_model(model, out, report_prompts=0, log=lambda m: print(m, flush=True))
    rep = parity_report(resolve_model(model), out, variants=["", "fp32"], n_prompts=prompts, repeats=repeats,
                        log=lambda m: print(m, flush=True))
    speed = {(r["runtime"], r["batch"]): r["tokens_per_second"] for r in rep["speed"]}
    int8, fp32 = rep["variants"]["default"], rep["variants"]["fp32"]
    return {
        "model": model,
        "export_seconds": manifest["timings"],
        "quantization": manifest["quantization"],
        "size_fp32_bytes": fp32["bytes"],
        "size_int8_bytes": int8["bytes"],
        "size_ratio": round(int8["bytes"] / fp32["bytes"], 3),
        "parity": rep["variants"],
        "speed": rep["speed"],
        "int8_vs_torch_batch1": round(speed[("ORT int8", 1)] / speed[("torch fp32", 1)], 2),
        "int8_vs_torch_batch8": round(speed[("ORT int8", 8)] / speed[("torch fp32", 8)], 2),
    }


def rows_for(name: str, r: dict) -> list[tuple[str, str]]:
    sp = {(x["runtime"], x["batch"]): x["tokens_per_second"] for x in r["speed"]}
    p8, p32 = r["parity"]["default"], r["parity"]["fp32"]
    rows = [(f"{name}: size fp32 / int8", f"{r['size_fp32_bytes'] / 1e6:.1f} MB / {r['size_int8_bytes'] / 1e6:.1f} MB "
                                          f"({r['size_ratio']:.0%})")]
    for b in (1, 8):
        rows.append((f"{name}: tok/s batch {b} torch fp32 | ORT fp32 | ORT int8",
                     f"{sp[('torch fp32', b)]} | {sp[('ORT fp32', b)]} | {sp[('ORT int8', b)]} "
                     f"(int8 {r[f'int8_vs_torch_batch{b}']}x torch)"))
    for label, p in (("int8", p8), ("fp32", p32)):
        rows.append((f"{name}: {label} top-1 | exact-32 | ROUGE-L",
                     f"{p['top1_agreement']:.1%} | {p['exact_match_32']:.0%} | {p['rouge_l']:.3f} "
                     f"(max |dlogit| {p['max_abs_logit_diff']:.3g})"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--t5", default="runs/herd/t5-tiny")
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    results, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="lamini-export-bench-") as tmp:
        teacher = measure(args.model, args.prompts, args.repeats, Path(tmp) / "teacher")
        results["teacher"] = teacher
        rows += rows_for(args.model, teacher)
        if Path(args.t5, "config.json").is_file():
            results["t5"] = measure(args.t5, args.prompts, args.repeats, Path(tmp) / "t5")
            rows += rows_for(Path(args.t5).name, results["t5"])
        else:
            print(f"no T5 student at {args.t5}: skipped", flush=True)
    targets = {
        "int8_vs_torch_batch1 >= 2.5": teacher["int8_vs_torch_batch1"] >= 2.5,
        "size_ratio <= 0.30": teacher["size_ratio"] <= 0.30,
        "int8 top1 >= 0.95": teacher["parity"]["default"]["top1_agreement"] >= 0.95,
    }
    rows += [(f"target {k}", "met" if ok else "MISSED") for k, ok in targets.items()]
    report("export", "export: torch fp32 vs ONNX Runtime", rows,
           {**results, "targets": targets, "prompts": args.prompts, "repeats": args.repeats}, args.out)


if __name__ == "__main__":
    main()
