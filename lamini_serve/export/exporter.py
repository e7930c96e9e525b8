"""Export a checkpoint to ONNX with optimum, quantize it, and say how it was made.

Layout of an export folder (flat, so optimum loads the default with no arguments):

    model.onnx                   the deployable graph: int8 weights (or as --quantize says)
    model_fp32.onnx              the fp32 export it was quantized from (--keep-fp32, the default)
    model_fp16.onnx              for GPU runtimes (--fp16)
    encoder_model*.onnx, decoder_model_merged*.onnx   the same for encoder-decoder models
    config.json, generation_config.json, tokenizer files, lamini.json
    export.json                  the manifest: source hash, versions, quantization settings, files
    parity.json, parity.md       the parity and speed report (unless --prompts 0)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from lamini_serve import __version__
from lamini_serve.checkpoint import graph_kinds, onnx_file, write_metadata
from lamini_serve.errors import LaminiError
from lamini_serve.export.isa import quantization_config, resolve_isa
from lamini_serve.models import Family, ModelSpec
from lamini_serve.paths import (
    atomic_dir,
    atomic_write_text,
    clean_stale_tmp,
    scratch_dir,
)

TASKS = {Family.CAUSAL: "text-generation-with-past", Family.SEQ2SEQ: "text2text-generation-with-past"}
MANIFEST = "export.json"
# int8: blockwise int8 weights, int8 compute (MatMulNBits, see quantize.py): the default.
# int4: the same with 4-bit weights (smaller, less faithful). int8-dynamic: optimum's
# ORTQuantizer, one activation scale per tensor. none: fp32 only.
QUANTIZE_CHOICES = ("int8", "int4", "int8-dynamic", "none")
BLOCK_SIZES = (16, 32, 64, 128)
# onnx: optimum's export, then quantize.py. fused: onnxruntime-genai's model builder, which
# writes the decoder with ONNX Runtime's fused operators (GroupQueryAttention with rotary
# embedding inside, SkipSimplifiedLayerNormalization, one MatMul for q, k and v): about a
# fifth of the nodes, so a decode step spends less time between kernels.
FORMATS = ("auto", "onnx", "fused")  # auto: fused where the builder writes the model type, else onnx
# model types onnxruntime-genai's builder writes (decoder-only; it has no GPT-2 and no T5)
FUSED_MODEL_TYPES = ("gemma", "gemma2", "granite", "llama", "mistral", "nemotron", "olmo", "phi", "phi3", "qwen2", "qwen3")


@dataclass
class ExportOptions:
    quantize: str = "int8"
    isa: str = "auto"  # avx512_vnni | avx512 | avx2 | arm64 | auto (detected)
    block_size: int = 0  # int8 / int4: weights per scale; 0: 64 for fused int8, else 32 (see resolved)
    per_channel: bool = True  # int8-dynamic: one weight scale per output channel
    keep_fp32: bool = True
    fp16: bool = False
    overwrite: bool = False
    format: str = "auto"

    def __post_init__(self) -> None:
        if self.quantize not in QUANTIZE_CHOICES:
            raise LaminiError(f"unknown --quantize {self.quantize!r}; choose one of {', '.join(QUANTIZE_CHOICES)}")
        if self.format not in FORMATS:
            raise LaminiError(f"unknown --format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.format == "fused" and self.quantize == "int8-dynamic":
            raise LaminiError("--format fused quantizes with MatMulNBits only; use --quantize int8, int4 or none")
        if self.format == "fused" and self.fp16:
            raise LaminiError("--format fused has no --fp16 variant; drop --fp16 (or use --format onnx)")
        if self.block_size and self.block_size not in BLOCK_SIZES:
            raise LaminiError(f"--block-size must be one of {', '.join(map(str, BLOCK_SIZES))}, got {self.block_size}")

    def resolved(self, spec: ModelSpec) -> "ExportOptions":
        """These options with `auto` decided for `spec`: the fused format where onnxruntime-genai's
        builder writes the model type (and is installed), with int8 weights in blocks of 64 (on the
        embedded teacher 96.5% top-1 and 1.30x llama.cpp's tokens/s: benchmarks/decode.py);
        optimum's export with blocks of 32 everywhere else."""
        from dataclasses import replace

        fmt = self.format
        if fmt == "auto":
            fmt = "fused" if (fused_writes(spec) and self.quantize != "int8-dynamic" and not self.fp16
                              and _has_genai()) else "onnx"
        block = self.block_size or (64 if fmt == "fused" and self.quantize == "int8" else 32)
        return replace(self, format=fmt, block_size=block)

    def quantization(self, isa: str | None) -> dict[str, Any] | None:
        if self.format == "fused" and self.quantize != "none":
            return {"mode": f"fused graph, blockwise {self.quantize} weights (onnxruntime-genai model builder, "
                            "MatMulNBits, symmetric)", "bits": 8 if self.quantize == "int8" else 4,
                    "block_size": self.block_size, "accuracy_level": 4, "activations": "int8 per block, at run time",
                    "embeddings": "int8 rows" if self.quantize == "int8" else "fp32 rows", "isa": isa}
        if self.quantize in ("int8", "int4"):
            bits = 8 if self.quantize == "int8" else 4
            return {"mode": f"blockwise {self.quantize} weights (ONNX Runtime MatMulNBits, symmetric)", "bits": bits,
                    "block_size": self.block_size, "accuracy_level": 4,
                    "activations": "int8 per block, at run time", "embeddings": "int8 rows" if bits == 8 else "int4 rows",
                    "isa": isa}
        if self.quantize == "int8-dynamic":
            return {"mode": "dynamic int8 (optimum ORTQuantizer)", "weights": "int8 (QInt8)",
                    "activations": "uint8, one scale per tensor, at run time", "isa": isa, "per_channel": self.per_channel}
        return None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """optimum and torch.onnx print pages of tracer warnings for every export; keep errors only."""
    from transformers.utils import logging as hf_logging

    names = ("optimum", "torch.onnx", "onnxruntime", "transformers")
    before = {n: logging.getLogger(n).level for n in names}
    hf_before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(hf_before)
        for n, level in before.items():
            logging.getLogger(n).setLevel(level)


def fused_writes(spec: ModelSpec) -> bool:
    """Whether onnxruntime-genai's builder writes this model (--format fused)."""
    return spec.family is Family.CAUSAL and spec.model_type in FUSED_MODEL_TYPES


def _has_genai() -> bool:
    from importlib.util import find_spec

    return find_spec("onnxruntime_genai") is not None


def supported_model_types(family: Family) -> list[str]:
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the architectures)
    from optimum.exporters.tasks import TasksManager

    task = TASKS[family]
    return sorted(k for k, v in TasksManager._SUPPORTED_MODEL_TYPE.items() if task in v.get("onnx", {}))


def check_exportable(spec: ModelSpec, fmt: str = "onnx") -> None:
    if fmt == "fused":
        if not fused_writes(spec):
            raise LaminiError(f"--format fused cannot write {spec.name} (model type {spec.model_type!r}); it writes "
                              f"decoder-only {', '.join(FUSED_MODEL_TYPES)}; use --format onnx")
        return
    kinds = supported_model_types(spec.family)
    if spec.model_type not in kinds:
        raise LaminiError(
            f"optimum cannot export {spec.name}: model type {spec.model_type!r} has no ONNX {TASKS[spec.family]} "
            f"export; supported {spec.family.value} types: {', '.join(kinds)}"
        )


def checkpoint_sha256(folder: Path, suffixes: tuple[str, ...] = (".safetensors", ".bin")) -> str:
    """One hash over the checkpoint's weight and config files, in name order."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix in suffixes or p.name == "config.json"))
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _local_folder(spec: ModelSpec) -> Path:
    if spec.is_local:
        return Path(spec.path)
    from huggingface_hub import snapshot_download

    from lamini_serve.hub import hub_errors

    with hub_errors(spec.name):
        return Path(snapshot_download(spec.path))


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"lamini-serve": __version__}
    for pkg in ("optimum", "optimum-onnx", "onnxruntime", "onnx", "torch", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _require_export_deps() -> None:
    try:
        import onnxruntime  # noqa: F401
        import optimum.exporters.onnx  # noqa: F401
    except ImportError as exc:
        raise LaminiError(f"lamini export needs optimum-onnx and onnxruntime ({exc.name} is missing); "
                          "install them with: pip install 'lamini-serve[export]'") from exc


def export_model(
    source: str,
    out: str | os.PathLike,
    options: ExportOptions | None = None,
    report_prompts: int = 16,
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Export `source` (any ModelSpec name) into the folder `out`; returns the manifest.

    Everything is written under a staging name and renamed at the end, so `out` is
    either absent (or left as it was) or a complete export.
    """
    opts = options or ExportOptions()
    out = Path(out)
    if out.exists() and not opts.overwrite:
        raise LaminiError(f"{out} already exists; choose another folder or pass --overwrite")
    _require_export_deps()
    spec = ModelSpec.resolve(source)
    if spec.runtime == "onnx":
        raise LaminiError(f"{source} is already an ONNX export; export the checkpoint it was made from")
    opts = opts.resolved(spec)
    check_exportable(spec, opts.format)
    isa = resolve_isa(opts.isa) if opts.quantize != "none" else None
    src = _local_folder(spec)
    clean_stale_tmp(out.parent if str(out.parent) else Path("."))
    t_start = time.perf_counter()
    with atomic_dir(out, overwrite=opts.overwrite) as staging:
        timings: dict[str, float] = {}
        files: dict[str, dict[str, Any]] = {}
        kinds = graph_kinds(spec.family)
        quant = opts.quantization(isa)
        if opts.format == "fused":
            variants = _fused_export(src, staging, opts, quant, timings, log)
        else:
            variants = _optimum_variants(spec, src, staging, opts, quant, isa, timings, log)
        for variant, kind in variants.items():
            names = [onnx_file(k, variant) for k in kinds]
            files[kind] = {"files": names, "bytes": sum(_graph_bytes(staging, n) for n in names),
                           "load": _load_hint(spec.family, variant, opts.format)}
        meta = {k: v for k, v in spec.metadata.items() if k not in ("family", "prompt_format")}
        write_metadata(staging, spec.family, spec.prompt_format, **{**meta, "runtime": "onnx", "default_variant": variants[""]})
        manifest = {
            "source": {"name": spec.name, "path": str(src), "model_type": spec.model_type,
                       "family": spec.family.value, "sha256": checkpoint_sha256(src)},
            "format": opts.format,
            "task": TASKS[spec.family],
            "quantization": quant,
            "variants": files,
            "versions": _versions(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "timings": timings,
        }
        if not opts.keep_fp32 and quant and report_prompts <= 0:
            _drop_variant(staging, spec.family, "fp32", manifest)
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        if report_prompts > 0:
            from lamini_serve.export.parity import parity_report, write_report

            log(f"checking parity with PyTorch on {report_prompts} prompts, and speed")
            report = parity_report(spec, staging, variants=[v for v in variants if variants[v] != "fp16"],
                                   n_prompts=report_prompts, log=log)
            write_report(staging, report)
            manifest["parity"] = {v: {k: r[k] for k in ("top1_agreement", "exact_match_32", "rouge_l")}
                                  for v, r in report["variants"].items()}
            if not opts.keep_fp32 and quant:
                _drop_variant(staging, spec.family, "fp32", manifest)
            manifest["timings"]["total_s"] = round(time.perf_counter() - t_start, 1)
            atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _optimum_variants(spec: ModelSpec, src: Path, staging: Path, opts: ExportOptions, quant: dict[str, Any] | None,
                      isa: str | None, timings: dict[str, float], log) -> dict[str, str]:
    """--format onnx: optimum's export, then quantize.py. Returns {variant: its kind}."""
    log(f"exporting {spec.describe()} with optimum ({TASKS[spec.family]})")
    t0 = time.perf_counter()
    _optimum_export(src, staging, spec.family)
    timings["export_s"] = round(time.perf_counter() - t0, 1)
    kinds = graph_kinds(spec.family)
    for k in kinds:  # fp32 graphs move aside; the deployable variant takes the standard names
        _move_graph(staging, onnx_file(k), onnx_file(k, "fp32"))
    if opts.fp16:
        log("converting to fp16 (for GPU runtimes)")
        for k in kinds:
            _to_fp16(staging / onnx_file(k, "fp32"), staging / onnx_file(k, "fp16"))
    if quant:
        log(f"quantizing: {quant['mode']}" + (f", blocks of {opts.block_size}" if "block_size" in quant else ""))
        t0 = time.perf_counter()
        for k in kinds:
            if opts.quantize == "int8-dynamic":
                quantize_dynamic(staging, onnx_file(k, "fp32"), onnx_file(k), isa, opts.per_channel)
            else:
                from lamini_serve.export.quantize import quantize_weights

                with quiet():
                    quant.setdefault("graphs", {})[onnx_file(k)] = quantize_weights(
                        staging / onnx_file(k, "fp32"), staging / onnx_file(k), quant["bits"], opts.block_size)
        timings["quantize_s"] = round(time.perf_counter() - t0, 1)
        variants = {"": opts.quantize, "fp32": "fp32"}
    else:
        for k in kinds:
            _move_graph(staging, onnx_file(k, "fp32"), onnx_file(k))
        variants = {"": "fp32"}
    if opts.fp16:
        variants["fp16"] = "fp16"
    return variants


def _fused_export(src: Path, staging: Path, opts: ExportOptions, quant: dict[str, Any] | None,
                  timings: dict[str, float], log) -> dict[str, str]:
    """--format fused: onnxruntime-genai's model builder writes each variant's graph (fp32 first,
    so that the genai_config.json left behind names the deployable model.onnx). The graphs are
    marked right-padded (see OrtEngine); config.json and generation_config.json come from the
    checkpoint, the tokenizer files from the builder."""
    import shutil

    t0 = time.perf_counter()
    wanted = [("fp32", "fp32")] if quant and opts.keep_fp32 else []
    wanted.append(("", opts.quantize if quant else "fp32"))
    for variant, precision in wanted:
        log(f"writing the fused graph ({precision}) with onnxruntime-genai's model builder")
        _genai_build(src, staging, precision, onnx_file("causal", variant), opts.block_size)
    for name in ("config.json", "generation_config.json"):
        if (src / name).is_file():
            shutil.copyfile(src / name, staging / name)
    timings["export_s"] = round(time.perf_counter() - t0, 1)
    if quant and quant["bits"] == 8:
        t0 = time.perf_counter()
        log("embedding table: int8 rows")
        quant["graphs"] = {onnx_file("causal"): {"embedding_tables": _fused_embeddings(src, staging, opts.block_size)}}
        timings["quantize_s"] = round(time.perf_counter() - t0, 1)
    return {v: kind for v, kind in wanted}


def _fused_embeddings(src: Path, staging: Path, block_size: int) -> dict[str, str]:
    """The builder leaves the embedding table in fp32 (its shared int8 path is broken in 0.15):
    lookups read int8 rows instead, the very bytes of the lm_head's weight when the model ties
    the two (as quantize.py does for --format onnx)."""
    import onnx

    from lamini_serve.export.quantize import quantize_gathers

    path = staging / onnx_file("causal")
    model = onnx.load(str(path))
    cfg = json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else {}
    ties = {}
    if cfg.get("tie_word_embeddings", True):
        head = [n.name for n in model.graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/")]
        tables = [n.input[0] for n in model.graph.node if n.op_type == "Gather" and "embed_tokens" in n.input[0]]
        if len(head) == 1 and len(tables) == 1:
            ties[tables[0]] = head[0]
    how = quantize_gathers(model, block_size, ties)
    for p in staging.glob(path.name + ".data"):
        p.unlink()
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data")
    os.chmod(staging / (path.name + ".data"), 0o644)  # onnx writes it owner-only; the folder is for sharing
    return how


def _genai_build(src: Path, out: Path, precision: str, filename: str, block_size: int) -> None:
    """One run of `python -m onnxruntime_genai.models.builder`, its chatter in a file that is
    quoted on failure; then the graph is marked right-padded."""
    import subprocess
    import sys

    try:
        import onnxruntime_genai  # noqa: F401  (fail early, with the fix)
    except ImportError as exc:
        raise LaminiError("--format fused needs onnxruntime-genai (pip install 'lamini-serve[export]')") from exc
    extra = [f"filename={filename}", "shared_embeddings=false"]
    if precision in ("int8", "int4"):
        extra += ["accuracy_level=4", f"block_size={block_size}"]
    with scratch_dir(out, "genai") as tmp:
        log_file = tmp / "builder.log"
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out),
               "-p", precision, "-e", "cpu", "-c", str(tmp / "cache"), "--extra_options", *extra]
        with open(log_file, "w") as f:
            rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
        if rc != 0 or not (out / filename).is_file():
            lines = [ln for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
            last = next((ln for ln in reversed(lines) if "Error" in ln or "Exception" in ln), lines[-1] if lines else "")
            raise LaminiError(f"onnxruntime-genai's model builder could not export {src} ({precision}): "
                              f"{last.strip()[:300]}; check that the checkpoint loads (lamini chat {src}), "
                              "or try --format onnx")
    mark_right_padded(out / filename)


def mark_right_padded(path: Path) -> None:
    """Record in the graph's metadata that its rows are padded on the right (OrtEngine reads it)."""
    import onnx

    from lamini_serve.engines.ort_engine import PADDING_KEY

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    props[PADDING_KEY] = "right"
    onnx.helper.set_model_props(model, props)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def _load_hint(family: Family, variant: str, fmt: str = "onnx") -> str:
    if fmt == "fused":  # not optimum's layout: OrtEngine (right padding), or onnxruntime-genai for the default
        return "OrtEngine(ModelSpec.resolve(folder)" + (f', variant="{variant}")' if variant else
                                                        "), or onnxruntime_genai.Model(folder)")
    if family is Family.SEQ2SEQ:
        args = "" if not variant else (f', encoder_file_name="{onnx_file("encoder", variant)}", '
                                       f'decoder_file_name="{onnx_file("decoder", variant)}"')
        return f"ORTModelForSeq2SeqLM.from_pretrained(folder{args})"
    args = "" if not variant else f', file_name="{onnx_file("causal", variant)}"'
    return f"ORTModelForCausalLM.from_pretrained(folder{args})"


def _drop_variant(folder: Path, family: Family, variant: str, manifest: dict) -> None:
    for k in graph_kinds(family):
        for p in folder.glob(onnx_file(k, variant) + "*"):
            p.unlink()
    manifest["variants"].pop(variant, None)


def _graph_bytes(folder: Path, name: str) -> int:
    """A graph's size with its external data file, if it has one."""
    return sum(p.stat().st_size for p in folder.glob(name + "*") if p.is_file())


def _move_graph(folder: Path, src: str, dst: str) -> None:
    # A graph over 2 GB keeps its weights in "<name>_data", referenced by that name
    # from inside the graph: the data file keeps its name, only the graph is renamed.
    os.replace(folder / src, folder / dst)


def _optimum_export(src: Path, out: Path, family: Family) -> None:
    from optimum.exporters.onnx import main_export

    with quiet():
        try:
            main_export(str(src), out, task=TASKS[family], do_validation=False, device="cpu")
        except LaminiError:
            raise
        except Exception as exc:  # transformers, safetensors and torch.onnx each raise their own types
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise LaminiError(f"optimum could not export {src}: {first}") from exc
    # The merged decoder holds both of these; optimum loads it first.
    for extra in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
        for p in out.glob(extra + "*"):
            p.unlink()
    if family is Family.SEQ2SEQ and not (out / onnx_file("decoder")).is_file():
        raise LaminiError(f"optimum exported {src} without a merged decoder; this version of optimum-onnx is not supported")


def quantize_dynamic(folder: Path, src_name: str, dst_name: str, isa: str, per_channel: bool) -> None:
    from optimum.onnxruntime import ORTQuantizer

    with quiet(), scratch_dir(folder, "quantize") as tmp:
        q = ORTQuantizer.from_pretrained(folder, file_name=src_name)
        q.quantize(save_dir=tmp, quantization_config=quantization_config(isa, per_channel))
        produced = [p for p in tmp.iterdir() if p.suffix == ".onnx"]
        if len(produced) != 1:
            raise LaminiError(f"quantizing {src_name} produced {len(produced)} graphs; expected one")
        os.replace(produced[0], folder / dst_name)
        for p in tmp.iterdir():  # external data of a large quantized graph
            if p.name.startswith(produced[0].name):
                os.replace(p, folder / p.name)


def _to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with quiet():
        model = onnx.load(str(src))
        # Inputs and outputs stay fp32 so callers feed the same arrays; inside, fp16.
        model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
        onnx.save(model, str(dst))

