"""What each ONNX Runtime option is worth: speed and fidelity of one model, option by option.

    python benchmarks/export_options.py [--model embedded] [--prompts 50] [--repeats 3]

Exports the model once (`lamini export` defaults: int8 weights in blocks of 32,
plus the fp32 graph), then makes the other variants from the same fp32 graph and
measures each at batch 1, 64 greedy new tokens (median of --repeats), with top-1
agreement, exact 32-token match and ROUGE-L against PyTorch over --prompts:

- the default, and the same graph with I/O binding on and with 1 thread;
- int8 blocks of 64 and 128, int4 blocks of 32;
- optimum's dynamic int8 (ORTQuantizer, the ISA detected here);
- optimum's ORTOptimizer (level 2 fusions) on the fp32 graph, then the default int8;
- the default graph through optimum's ORTModelForCausalLM.generate instead of OrtEngine;
- torch fp32 for scale.

Prints a table, writes benchmarks/results/export_options.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

TOKENS = 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from lamini_serve.engines.torch_engine import SamplingParams, TorchEngine
    from lamini_serve.export.exporter import ExportOptions, quantize_dynamic, export_model
    from lamini_serve.export.isa import resolve_isa
    from lamini_serve.export.parity import tokens_per_second, agreement, references
    from lamini_serve.export.quantize import quantize_weights
    from lamini_serve.models import Family, ModelSpec
    from lamini_serve.teacher.embedded import resolve_model
    from lamini_serve.engines.ort_engine import OrtEngine

    spec = resolve_model(args.model)
    if spec.family is not Family.CAUSAL:
        sys.exit("export_options.py measures decoder-only models (optimum's ORTModelForCausalLM is one of the rows)")
    log = lambda m: print(m, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="lamini-export-options-") as tmp:
        folder = Path(tmp) / "export"
        export_model(args.model, folder, ExportOptions(), report_prompts=0, log=log)
        fp32 = folder / "model_fp32.onnx"
        sizes = {"fp32": fp32.stat().st_size, "default": (folder / "model.onnx").stat().st_size}
        made: dict[str, str | None] = {}
        for variant, bits, block in (("b64", 8, 64), ("b128", 8, 128), ("int4", 4, 32)):
            log(f"quantizing {variant}")
            quantize_weights(fp32, folder / f"model_{variant}.onnx", bits, block)
            made[variant] = None
        log("quantizing with optimum's ORTQuantizer (dynamic int8)")
        quantize_dynamic(folder, "model_fp32.onnx", "model_dynamic.onnx", resolve_isa("auto"), True)
        made["dynamic"] = None
        log("optimizing the fp32 graph with optimum's ORTOptimizer (level 2), then int8")
        try:
            from optimum.onnxruntime import ORTOptimizer
            from optimum.onnxruntime.configuration import OptimizationConfig

            opt_dir = Path(tmp) / "optimized"
            ORTOptimizer.from_pretrained(folder, file_names=["model_fp32.onnx"]).optimize(
                OptimizationConfig(optimization_level=2, optimize_for_gpu=False), opt_dir)
            [optimized] = [p for p in opt_dir.glob("*.onnx")]
            quantize_weights(optimized, folder / "model_ortopt.onnx", 8, 32)
            made["ortopt"] = None
        except Exception as exc:  # noqa: BLE001  (a row that says why, rather than no table)
            made["ortopt"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            log(f"ORTOptimizer failed: {made['ortopt']}")
        for v in made:
            if made[v] is None:
                sizes[v] = (folder / f"model_{v}.onnx").stat().st_size

        model = spec.load_model(device="cpu", dtype="float32")
        tok = spec.load_tokenizer()
        torch_engine = TorchEngine.from_loaded(spec, model, tok)
        base = OrtEngine(ModelSpec.resolve(folder))
        log(f"PyTorch greedy references for {args.prompts} prompts")
        prompts, encoded, refs = references(model, base, spec.family, args.prompts)
        conv = [[{"role": "user", "content": prompts[0]}]]
        params = SamplingParams(max_new_tokens=TOKENS, repetition_penalty=1.0, ignore_eos=True)

        def speed(run) -> float:
            run()  # warm up
            return tokens_per_second(run, TOKENS, args.repeats)

        rows: dict[str, dict] = {}
        log("torch fp32")
        rows["torch fp32"] = {"tokens_per_second": speed(lambda: torch_engine.generate(conv, params))}
        configs = [("default (int8 blocks of 32, all threads, no I/O binding on the CPU)", "", {}),
                   ("I/O binding on", "", {"io_binding": True}),
                   ("1 thread", "", {"threads": 1}),
                   ("int8 blocks of 64", "b64", {}), ("int8 blocks of 128", "b128", {}), ("int4 blocks of 32", "int4", {}),
                   ("optimum dynamic int8", "dynamic", {}), ("ORTOptimizer level 2 + default int8", "ortopt", {})]
        for label, variant, kw in configs:
            if made.get(variant):
                rows[label] = {"error": made[variant]}
                continue
            log(label)
            eng = base if (variant == "" and not kw) else OrtEngine(ModelSpec.resolve(folder), variant=variant, **kw)
            r = {"tokens_per_second": speed(lambda: eng.generate(conv, params)),
                 "bytes": sizes["default" if variant == "" else variant]}
            if not kw:  # the same graph gives the same tokens: fidelity once per graph
                r.update(agreement(model, eng, encoded, refs, spec.family))
            rows[label] = r
        log("optimum ORTModelForCausalLM.generate")
        rows["default graph through optimum's ORTModelForCausalLM.generate"] = {
            "tokens_per_second": _optimum_speed(folder, encoded[0], speed)}

    torch_tps = rows["torch fp32"]["tokens_per_second"]
    table = []
    for label, r in rows.items():
        if "error" in r:
            table.append((label, f"failed: {r['error']}"))
            continue
        r["vs_torch_fp32"] = round(r["tokens_per_second"] / torch_tps, 2)
        cell = f"{r['tokens_per_second']} tok/s ({r['vs_torch_fp32']}x torch)"
        if "bytes" in r:
            cell += f", {r['bytes'] / 1e6:.1f} MB ({r['bytes'] / sizes['fp32']:.0%} of fp32)"
        if "top1_agreement" in r:
            cell += f", top-1 {r['top1_agreement']:.1%}, exact-32 {r['exact_match_32']:.0%}, ROUGE-L {r['rouge_l']:.3f}"
        table.append((label, cell))
    report("export_options", f"ONNX Runtime options, {args.model}, batch 1, {TOKENS} new tokens", table,
           {"model": args.model, "prompts": args.prompts, "repeats": args.repeats, "fp32_bytes": sizes["fp32"],
            "rows": rows}, args.out)


def _optimum_speed(folder: Path, ids: list[int], speed) -> float:
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(folder)  # model.onnx: the default variant
    x = torch.tensor([ids])
    return speed(lambda: model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=TOKENS,
                                        min_new_tokens=TOKENS, do_sample=False))


if __name__ == "__main__":
    main()
