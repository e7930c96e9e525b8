"""Does the export still answer the same? Parity with PyTorch, and speed, per variant.

For each prompt, PyTorch (fp32) greedily continues it for 32 tokens. Along that
continuation (teacher forcing) the export's logits are compared with PyTorch's:
the largest and mean absolute difference, and top-1 agreement (the share of
positions where the export's most likely token is the one PyTorch chose). Then the
export decodes greedily on its own: the share of prompts whose 32 tokens match
exactly, and ROUGE-L between the two answers. Speed is tokens/s at batch 1 and 8
for 64 new tokens (end tokens suppressed so every run is the same length).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from lamini_serve.checkpoint import graph_kinds, onnx_file
from lamini_serve.generation import SamplingParams
from lamini_serve.models import Family, ModelSpec
from lamini_serve.paths import atomic_write_text

FORCED_TOKENS = 32
SPEED_TOKENS = 64
SPEED_BATCHES = (1, 8)
VARIANT_LABEL = {"": "deployable", "fp32": "fp32"}


def parity_prompts(n: int) -> list[str]:
    """n instructions from the built-in seed set (cycled if n is larger)."""
    from lamini_serve.data.seeds import load_seeds

    seeds = load_seeds()
    out = []
    for i in range(n):
        s = seeds[i % len(seeds)]
        out.append(s.instruction + (f"\n\n{s.input}" if s.input else ""))
    return out


def _torch_greedy(model, ids: list[int], n: int, eos: list[int], pad: int, family: Family) -> list[int]:
    import torch

    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                             temperature=None, top_p=None, top_k=None, eos_token_id=eos, pad_token_id=pad)
    new = out[0, len(ids):] if family is Family.CAUSAL else out[0, 1:]
    return _until_eos(new.tolist(), eos)


def _until_eos(row: list[int], eos: Sequence[int]) -> list[int]:
    for i, t in enumerate(row):
        if t in eos:
            return row[:i + 1]
    return row


def _torch_forced(model, ids: list[int], cont: list[int], family: Family, start: int | None):
    import torch

    with torch.inference_mode():
        if family is Family.CAUSAL:
            full = torch.tensor([ids + cont[:-1]])
            logits = model(input_ids=full, attention_mask=torch.ones_like(full)).logits[0, len(ids) - 1:]
        else:
            x = torch.tensor([ids])
            dec = torch.tensor([[start] + cont[:-1]])
            logits = model(input_ids=x, attention_mask=torch.ones_like(x), decoder_input_ids=dec).logits[0]
    return logits.float().numpy()


def tokens_per_second(run: Callable[[], Any], tokens: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return round(tokens / statistics.median(times), 1)


def parity_report(
    spec: ModelSpec,
    folder: Path,
    variants: Sequence[str] = ("",),
    n_prompts: int = 16,
    repeats: int = 1,
    speed: bool = True,
    threads: int | None = None,
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """The report as a dict (see the module docstring); `folder` holds the export."""
    from lamini_serve.engines.torch_engine import TorchEngine
    from lamini_serve.engines.ort_engine import OrtEngine

    export_spec = ModelSpec.resolve(folder)
    model = spec.load_model(device="cpu", dtype="float32")
    torch_engine = TorchEngine.from_loaded(spec, model, spec.load_tokenizer())
    engines = {v: OrtEngine(export_spec, variant=v, threads=threads) for v in variants}
    prompts, encoded, refs = references(model, next(iter(engines.values())), spec.family, n_prompts)
    report: dict[str, Any] = {"prompts": n_prompts, "forced_tokens": FORCED_TOKENS, "variants": {}}
    for v, eng in engines.items():
        report["variants"][v or "default"] = {
            "label": eng_label(folder, v),
            "files": [onnx_file(k, v) for k in graph_kinds(spec.family)],
            "bytes": sum(_size(folder, onnx_file(k, v)) for k in graph_kinds(spec.family)),
            **agreement(model, eng, encoded, refs, spec.family),
        }
        log(f"  {report['variants'][v or 'default']['label']}: top-1 agreement "
            f"{report['variants'][v or 'default']['top1_agreement']:.1%}")
    if speed:
        report["speed"] = _speed(torch_engine, engines, folder, prompts, repeats, log)
    report["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    return report


def references(model, eng, family: Family, n_prompts: int) -> tuple[list[str], list[list[int]], list[list[int]]]:
    """The parity prompts, their token ids as `eng` prompts them, and PyTorch's greedy continuations."""
    prompts = parity_prompts(n_prompts)
    encoded = eng.encode_texts([eng.prompt_text([{"role": "user", "content": p}]) for p in prompts])
    refs = [_torch_greedy(model, ids, FORCED_TOKENS, eng.eos_ids, eng.pad_id, family) for ids in encoded]
    return prompts, encoded, refs


def agreement(model, eng, encoded: Sequence[list[int]], refs: Sequence[list[int]], family: Family) -> dict[str, Any]:
    """Parity of one ONNX engine with the PyTorch `model` along its greedy continuations `refs`."""
    import numpy as np

    from lamini_serve.rouge import rouge_l

    tok, eos, start = eng.tokenizer, eng.eos_ids, getattr(eng, "decoder_start", None)
    greedy = SamplingParams(max_new_tokens=FORCED_TOKENS, repetition_penalty=1.0)
    agree = total = exact = 0
    max_diff, diff_sum, diff_n = 0.0, 0.0, 0
    rouges = []
    for ids, ref in zip(encoded, refs):
        if not ref:
            continue
        t_logits = _torch_forced(model, ids, ref, family, start)
        o_logits = eng.forced_logits(ids, ref).astype(np.float32)
        d = np.abs(t_logits - o_logits)
        max_diff = max(max_diff, float(d.max()))
        diff_sum += float(d.sum())
        diff_n += d.size
        agree += int((o_logits.argmax(-1) == np.asarray(ref)).sum())
        total += len(ref)
        mine = _until_eos(eng.generate_ids([ids], greedy)[0], eos)
        exact += int(mine == ref)
        rouges.append(rouge_l(tok.decode(mine, skip_special_tokens=True), tok.decode(ref, skip_special_tokens=True)))
    return {
        "max_abs_logit_diff": round(max_diff, 5),
        "mean_abs_logit_diff": round(diff_sum / max(diff_n, 1), 6),
        "top1_agreement": round(agree / max(total, 1), 4),
        "positions": total,
        "exact_match_32": round(exact / max(len(rouges), 1), 4),
        "rouge_l": round(sum(rouges) / max(len(rouges), 1), 4),
    }


def eng_label(folder: Path, variant: str) -> str:
    meta_file = folder / "lamini.json"
    default = json.loads(meta_file.read_text()).get("default_variant", "int8") if meta_file.is_file() else "int8"
    return f"ORT {variant or default}"


def _size(folder: Path, name: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(name + "*") if p.is_file())


def _speed(torch_engine, engines: dict, folder: Path, prompts: list[str], repeats: int, log) -> list[dict[str, Any]]:
    rows = []
    params = SamplingParams(max_new_tokens=SPEED_TOKENS, repetition_penalty=1.0, ignore_eos=True)
    runners = [("torch fp32", torch_engine)] + [(eng_label(folder, v), e) for v, e in engines.items()]
    for batch in SPEED_BATCHES:
        convs = [[{"role": "user", "content": p}] for p in (prompts * batch)[:batch]]
        for name, eng in runners:
            eng.generate(convs[:1], SamplingParams(max_new_tokens=4, repetition_penalty=1.0))  # warm up
            tps = tokens_per_second(lambda: eng.generate(convs, params), SPEED_TOKENS * batch, repeats)
            rows.append({"runtime": name, "batch": batch, "new_tokens": SPEED_TOKENS, "tokens_per_second": tps})
            log(f"  {name}, batch {batch}: {tps} tok/s")
    base = {r["batch"]: r["tokens_per_second"] for r in rows if r["runtime"] == "torch fp32"}
    for r in rows:
        r["vs_torch_fp32"] = round(r["tokens_per_second"] / base[r["batch"]], 2) if base.get(r["batch"]) else None
    return rows


def render_markdown(report: dict[str, Any], title: str = "Parity and speed") -> str:
    lines = [f"# {title}", "",
             f"{report['prompts']} prompts; PyTorch fp32 greedy continuation of {report['forced_tokens']} tokens as reference.", "",
             "| variant | size | top-1 agreement | exact match (32 tokens) | ROUGE-L | max abs logit diff | mean abs logit diff |",
             "|---|---|---|---|---|---|---|"]
    from lamini_serve.paths import human_size

    for v in report["variants"].values():
        lines.append(f"| {v['label']} | {human_size(v['bytes'])} | {v['top1_agreement']:.1%} | {v['exact_match_32']:.1%} | "
                     f"{v['rouge_l']:.3f} | {v['max_abs_logit_diff']:.4g} | {v['mean_abs_logit_diff']:.4g} |")
    if report.get("speed"):
        lines += ["", f"Speed: greedy, {SPEED_TOKENS} new tokens per row.", "",
                  "| runtime | batch | tokens/s | vs torch fp32 |", "|---|---|---|---|"]
        for r in report["speed"]:
            lines.append(f"| {r['runtime']} | {r['batch']} | {r['tokens_per_second']} | {r['vs_torch_fp32']}x |")
    return "\n".join(lines) + "\n"


def write_report(folder: Path, report: dict[str, Any]) -> None:
    atomic_write_text(folder / "parity.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(folder / "parity.md", render_markdown(report))
