"""Decode speed on a CPU: lamini's export variants against llama.cpp, in one run.

    python benchmarks/decode.py [--model embedded] [--rounds 4] [--prompts 50]

Exports the model (once; kept under --work) as each variant below, then times 64
greedy new tokens from the model's chat prompt ("Give three tips for staying
healthy."), end tokens suppressed, at batch 1 and batch 8. Rounds alternate between
the runtimes (the order rotates each round) and the table gives the median tokens/s.
Each lamini variant's parity with PyTorch fp32 over --prompts instructions: top-1
agreement under teacher forcing along PyTorch's greedy continuation, and ROUGE-L
between the two greedy answers (lamini_serve.export.parity).

A T5 student (--model runs/herd/t5-tiny) gets onnx-int8 and CTranslate2 only: the fused
builder writes decoder-only models, and llama-cpp-python has no T5 converter.

lamini variants (all through OrtEngine, the engine of `lamini chat` and `lamini serve`):
  onnx-int8     `lamini export` with --format onnx: optimum's graph, int8 MatMulNBits, blocks of 32
  fused-int8    `lamini export --format fused`: onnxruntime-genai's builder (GroupQueryAttention,
                rotary and skip-RMSNorm fused), int8 MatMulNBits, blocks of 32
  fused-int8-b64, fused-int4   the same with blocks of 64, and with 4-bit weights
Other runtimes, each skipped with a message when its package is missing:
  fused-int8 through onnxruntime-genai's own C++ decode loop (pip install onnxruntime-genai)
  CTranslate2 int8 (pip install ctranslate2; its converter runs on the checkpoint)
  OpenVINO int8 weights through optimum-intel (pip install 'optimum-intel[openvino]==1.27.0')
  llama.cpp: the GGUF (--gguf; for `embedded`, the teacher's own Q4_1 file). Its Python
  binding decodes one sequence, so batch 1 only. It is a benchmark-only dependency that
  builds from source (8-15 min on 2 cores):
      CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36
  On a CPU whose AMX tiles the kernel does not grant (SIGILL in ggml_backend_amx_mul_mat),
  build with -DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF
  -DGGML_AMX_INT8=OFF (and the AVX2/FMA/F16C flags) instead.

Prints a table, writes benchmarks/results/decode.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

TOKENS = 64
PROMPT = "Give three tips for staying healthy."
VARIANTS = {  # name: ExportOptions fields
    "onnx-int8": {},
    "fused-int8": {"format": "fused"},
    "fused-int8-b64": {"format": "fused", "block_size": 64},
    "fused-int4": {"format": "fused", "quantize": "int4"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", help="A causal checkpoint (name, folder or hub id).")
    ap.add_argument("--gguf", default=None, help="llama.cpp's file for the same model (default: the embedded teacher's).")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=50, help="Prompts for parity (0: none).")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--work", default="runs/bench-decode", help="Where the exports are kept between runs.")
    ap.add_argument("--no-extras", action="store_true", help="Only the lamini variants and llama.cpp.")
    ap.add_argument("--profile", action="store_true",
                    help="Also profile one batch-1 decode of each lamini variant with ONNX Runtime's profiler: "
                         "time per operator type, and the share of the wall time spent outside session.run.")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from lamini_serve.engines.ort_engine import OrtEngine
    from lamini_serve.export.exporter import ExportOptions, export_model
    from lamini_serve.export.parity import agreement, references
    from lamini_serve.generation import SamplingParams
    from lamini_serve.hardware import cpu_name
    from lamini_serve.models import Family, ModelSpec
    from lamini_serve.teacher.embedded import resolve_model

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    spec = resolve_model(args.model)
    seq2seq = spec.family is Family.SEQ2SEQ
    work = Path(args.work) / Path(spec.name).name
    names = [v for v in args.variants.split(",") if v]
    failed: dict[str, str] = {}
    if seq2seq:  # T5: optimum's format only; the fused builder and llama.cpp's Python path have no T5
        failed.update({v: "onnxruntime-genai's builder writes decoder-only models only" for v in names if "fused" in v})
        names = [v for v in names if "fused" not in v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant {unknown[0]}; choose from {', '.join(VARIANTS)}")
    engines: dict[str, OrtEngine] = {}
    for v in names:
        folder = work / v
        if not (folder / "export.json").is_file():
            log(f"exporting {v} into {folder}")
            try:
                export_model(args.model, folder, ExportOptions(keep_fp32=False, overwrite=True, **VARIANTS[v]),
                             report_prompts=0, log=log)
            except Exception as exc:  # noqa: BLE001  (a row that says why, rather than no table)
                failed[v] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                continue
        engines[v] = OrtEngine(ModelSpec.resolve(folder), threads=args.threads)

    if not engines:
        sys.exit("no variant could be exported: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    base = next(iter(engines.values()))
    conv = [{"role": "user", "content": PROMPT}]
    ids = base.encode_texts([base.prompt_text(conv)])[0]
    params = SamplingParams(max_new_tokens=TOKENS, repetition_penalty=1.0, ignore_eos=True)
    runners: dict[str, dict[int, Callable[[], object]]] = {}
    for v, eng in engines.items():
        runners[v] = {b: (lambda e=eng, b=b: e.generate([conv] * b, params)) for b in (1, 8)}
    extras = {} if args.no_extras else {"fused-int8 (onnxruntime-genai loop)": lambda: _genai(work / "fused-int8", ids),
                                        "ctranslate2 int8": lambda: _ct2(spec, work / "ct2-int8", ids, args.threads),
                                        "openvino int8 (optimum-intel)": lambda: _openvino(spec, work / "ov-int8", ids,
                                                                                           args.threads)}
    extras["llama.cpp"] = lambda: _llama(args.gguf or _default_gguf(args.model), ids, args.threads)
    if seq2seq:
        extras.pop("fused-int8 (onnxruntime-genai loop)", None)
        extras.pop("openvino int8 (optimum-intel)", None)
        failed["llama.cpp"] = "no T5 here: llama-cpp-python ships no converter to GGUF for T5"
        extras.pop("llama.cpp")
    forced_of: dict[str, Callable] = {}  # other runtimes' teacher-forced logits, for top-1 agreement
    for name, make in extras.items():
        try:
            runners[name] = make()
            if "forced" in runners[name]:
                forced_of[name] = runners[name].pop("forced")
        except _Skip as exc:
            failed[name] = str(exc)
            log(f"{name}: skipped ({exc})")

    speeds: dict[str, dict[int, list[float]]] = {n: {1: [], 8: []} for n in runners}
    for n, by_batch in runners.items():  # warm up (and compile, for the runtimes that do)
        for b, run in by_batch.items():
            run()
    order = list(runners)
    for r in range(args.rounds):
        log(f"round {r + 1}/{args.rounds}")
        for n in order[r % len(order):] + order[:r % len(order)]:
            for b, run in runners[n].items():
                t0 = time.perf_counter()
                run()
                speeds[n][b].append(TOKENS * b / (time.perf_counter() - t0))

    profiles = {v: profile(eng, conv, params) for v, eng in engines.items()} if args.profile else {}

    fidelity: dict[str, dict] = {}
    if args.prompts and engines:
        log(f"parity with PyTorch fp32 over {args.prompts} prompts")
        model = spec.load_model(device="cpu", dtype="float32")
        _, encoded, refs = references(model, base, spec.family, args.prompts)
        for v, eng in engines.items():
            fidelity[v] = agreement(model, eng, encoded, refs, spec.family)
            log(f"  {v}: top-1 {fidelity[v]['top1_agreement']:.1%}")
        for name, forced in forced_of.items():
            agree = [int(a == b) for ids_, ref in zip(encoded, refs) if ref
                     for a, b in zip(forced(ids_, ref).argmax(-1).tolist(), ref)]
            fidelity[name] = {"top1_agreement": round(sum(agree) / max(len(agree), 1), 4)}
            log(f"  {name}: top-1 {fidelity[name]['top1_agreement']:.1%}")
        if "fused-int8" in fidelity:  # the same graph, the same logits
            fidelity["fused-int8 (onnxruntime-genai loop)"] = fidelity["fused-int8"]

    med = {n: {b: round(statistics.median(v), 1) for b, v in s.items() if v} for n, s in speeds.items()}
    ref = med.get("llama.cpp", {}).get(1)
    rows, table = {}, []
    for n in runners:
        row = {"tokens_per_second": med[n], "runs": speeds[n]}
        if ref:
            row["vs_llama_cpp_batch1"] = round(med[n][1] / ref, 2)
        for k in ("top1_agreement", "exact_match_32", "rouge_l"):
            if k in fidelity.get(n, {}):
                row[k] = fidelity[n][k]
        if n in engines:
            row["bytes"] = sum(p.stat().st_size for p in (work / n).glob("*.onnx*"))
        rows[n] = row
        cell = f"batch 1: {med[n][1]} tok/s" + (f" ({row['vs_llama_cpp_batch1']}x llama.cpp)" if ref else "")
        cell += f", batch 8: {med[n][8]} tok/s" if 8 in med[n] else ", batch 8: -"
        if "top1_agreement" in row:
            cell += f", top-1 {row['top1_agreement']:.1%}"
        if "rouge_l" in row:
            cell += f", ROUGE-L {row['rouge_l']:.3f}"
        if "bytes" in row:
            cell += f", {row['bytes'] / 1e6:.1f} MB"
        table.append((n, cell))
    for n, why in failed.items():
        table.append((n, f"not run: {why}"))
    for v, prof in profiles.items():
        ops = ", ".join(f"{op} {share:.0%}" for op, share in list(prof["op_share"].items())[:5])
        table.append((f"{v} profile", f"{prof['nodes_per_step']} nodes/step; outside session.run "
                                      f"{prof['outside_run_share']:.0%} of the wall time; {ops}"))
    report("decode", f"{spec.name}, {TOKENS} greedy new tokens, {args.threads} threads, {cpu_name()}", table,
           {"model": args.model, "cpu": cpu_name(), "threads": args.threads, "rounds": args.rounds,
            "prompts": args.prompts, "new_tokens": TOKENS, "prompt": PROMPT, "rows": rows, "not_run": failed,
            "profiles": profiles},
           args.out)


def profile(eng, conv, params) -> dict:
    """One batch-1 decode of `eng` with ONNX Runtime's profiler on: the share of node time per
    operator type, nodes run per step, and the share of the wall time outside session.run
    (the Python decode loop: sampling, feeds, copies)."""
    import json
    import tempfile

    import onnxruntime as ort

    from lamini_serve.engines.ort_engine import session_options

    graph = eng.decoder
    original = graph.session
    with tempfile.TemporaryDirectory() as tmp:
        so = session_options(eng.threads)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "decode")
        graph.session = ort.InferenceSession(original._model_path, sess_options=so, providers=["CPUExecutionProvider"])
        try:
            t0 = time.perf_counter()
            eng.generate([conv], params)
            wall = time.perf_counter() - t0
            events = json.loads(Path(graph.session.end_profiling()).read_text())
        finally:
            graph.session = original
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    by_op: dict[str, float] = {}
    for e in nodes:
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + e["dur"]
    total = sum(by_op.values()) or 1.0
    return {"op_share": {k: round(v / total, 3) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
            "nodes_per_step": round(len(nodes) / max(len(runs), 1)),
            "outside_run_share": round(1 - sum(e["dur"] for e in runs) / 1e6 / wall, 3), "wall_s": round(wall, 3)}


class _Skip(Exception):
    pass


def _default_gguf(model: str) -> str:
    from lamini_serve.teacher.embedded import EMBEDDED_ALIASES

    if model not in EMBEDDED_ALIASES:
        raise _Skip("no --gguf given for a model other than the embedded teacher")
    from lamini_serve.paths import lamini_home

    found = sorted(lamini_home().glob("downloads/*.gguf"))
    if not found:
        raise _Skip("the embedded teacher's GGUF is not in LAMINI_HOME/downloads; run `lamini teacher pull` first")
    return str(found[0])


def _llama(gguf: str, ids: list[int], threads: int) -> dict[int, Callable[[], object]]:
    try:
        from llama_cpp import Llama
    except ImportError:
        raise _Skip("llama-cpp-python is not installed: CMAKE_ARGS='-DGGML_NATIVE=ON' "
                    "pip install llama-cpp-python==0.3.36 (builds from source, 8-15 min)") from None
    llm = Llama(gguf, n_threads=threads, n_threads_batch=threads, n_ctx=512, n_batch=512, verbose=False)

    def run() -> None:
        llm.reset()
        for k, _ in enumerate(llm.generate(ids, top_k=1, temp=0.0, reset=True), start=1):
            if k >= TOKENS:  # greedy, and the end token is not special-cased: every run is 64 tokens
                break

    return {1: run}


def _genai(folder: Path, ids: list[int]) -> dict[int, Callable[[], object]]:
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise _Skip("onnxruntime-genai is not installed") from None
    if not (folder / "genai_config.json").is_file():
        raise _Skip(f"{folder} was not exported (fused-int8 is not among --variants)")
    model = og.Model(str(folder))

    def run(batch: int) -> None:
        p = og.GeneratorParams(model)
        p.set_search_options(max_length=len(ids) + TOKENS, min_length=len(ids) + TOKENS, do_sample=False,
                             batch_size=batch)
        g = og.Generator(model, p)
        g.append_tokens([ids] * batch)
        while not g.is_done():
            g.generate_next_token()

    return {b: (lambda b=b: run(b)) for b in (1, 8)}


def _openvino(spec, folder: Path, ids: list[int], threads: int) -> dict[int, Callable[[], object]]:
    """optimum-intel's OVModelForCausalLM: int8 weight compression (NNCF), a stateful model
    (the cache stays inside OpenVINO), transformers' generate loop."""
    try:
        from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig
    except ImportError:
        raise _Skip("optimum-intel is not installed: pip install 'optimum-intel[openvino]==1.27.0' (1.27 installs "
                    "beside torch 2.13 and transformers 4.57; 2.x wants torch 2.14)") from None
    import torch

    cfg = {"INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY"}
    if not (folder / "openvino_model.xml").is_file():
        model = OVModelForCausalLM.from_pretrained(str(spec.path), export=True, ov_config=cfg,
                                                   quantization_config=OVWeightQuantizationConfig(bits=8))
        model.save_pretrained(str(folder))
    model = OVModelForCausalLM.from_pretrained(str(folder), ov_config=cfg)
    pad = spec.load_tokenizer().pad_token_id or 0

    def run(batch: int) -> None:
        x = torch.tensor([ids] * batch)
        model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=TOKENS, min_new_tokens=TOKENS,
                       do_sample=False, pad_token_id=pad)

    def forced(prompt: list[int], cont: list[int]):
        x = torch.tensor([prompt + cont[:-1]])
        with torch.inference_mode():  # no past given: the stateful model starts a new sequence
            return model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, len(prompt) - 1:].float().numpy()

    return {1: lambda: run(1), 8: lambda: run(8), "forced": forced}


def _ct2(spec, folder: Path, ids: list[int], threads: int) -> dict[int, Callable[[], object]]:
    try:
        import ctranslate2
    except ImportError:
        raise _Skip("ctranslate2 is not installed") from None
    if not (folder / "model.bin").is_file():
        from ctranslate2.converters import TransformersConverter

        TransformersConverter(str(spec.path)).convert(str(folder), quantization="int8", force=True)
    tokens = spec.load_tokenizer().convert_ids_to_tokens(ids)
    if spec.family.value == "seq2seq":
        tr = ctranslate2.Translator(str(folder), device="cpu", intra_threads=threads, compute_type="int8")

        def translate(batch: int) -> None:
            tr.translate_batch([tokens] * batch, max_decoding_length=TOKENS, min_decoding_length=TOKENS, beam_size=1)

        return {b: (lambda b=b: translate(b)) for b in (1, 8)}
    gen = ctranslate2.Generator(str(folder), device="cpu", intra_threads=threads, compute_type="int8")

    def run(batch: int) -> None:
        gen.generate_batch([tokens] * batch, max_length=TOKENS, min_length=TOKENS, sampling_topk=1,
                           include_prompt_in_result=False)

    return {b: (lambda b=b: run(b)) for b in (1, 8)}


if __name__ == "__main__":
    main()
