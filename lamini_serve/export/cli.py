"""`lamini export`: ONNX + int8 for one checkpoint or a whole herd, with a parity report."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lamini_serve.errors import LaminiError


def _log(message: str) -> None:
    click.echo(message, err=True)


@click.command("export")
@click.argument("checkpoint", required=False)
@click.argument("out", required=False, type=click.Path(path_type=Path))
@click.option("--herd", "recipe", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Export every student of the herd this recipe trained (OUT defaults to <output>-onnx).")
@click.option("--format", "fmt", type=click.Choice(["auto", "onnx", "fused"]), default="auto", show_default=True,
              help="fused: onnxruntime-genai's model builder, with ONNX Runtime's fused attention and norms "
                   "(decoder-only Llama, Mistral, Qwen, Phi, Gemma...; the fastest per token on a CPU). onnx: "
                   "optimum's export (every family, GPT-2 and T5 included). auto: fused where it can, else onnx.")
@click.option("--quantize", type=click.Choice(["int8", "int4", "int8-dynamic", "none"]), default="int8", show_default=True,
              help="int8: int8 weights in blocks, int8 compute (faithful and fast: the default). int4: 4-bit blocks "
                   "(smaller, less faithful). int8-dynamic: optimum's ORTQuantizer (one activation scale per tensor). "
                   "none: fp32 only.")
@click.option("--block-size", type=click.Choice(["auto", "16", "32", "64", "128"]), default="auto", show_default=True,
              help="int8/int4: weights per scale. Larger is faster and smaller, smaller is more faithful. "
                   "auto: 64 for fused int8, 32 otherwise.")
@click.option("--isa", type=click.Choice(["auto", "avx512_vnni", "avx512", "avx2", "arm64"]), default="auto",
              show_default=True, help="Instruction set of the CPU that will run the export; checked against this "
                                      "CPU, recorded, and used to configure int8-dynamic. auto: this CPU's best.")
@click.option("--per-tensor", is_flag=True, help="int8-dynamic: one weight scale per matrix instead of per output channel.")
@click.option("--fp16", is_flag=True, help="Also write an fp16 variant (model_fp16.onnx) for GPU runtimes.")
@click.option("--keep-fp32/--drop-fp32", default=True, show_default=True,
              help="Keep the fp32 export (model_fp32.onnx) beside the int8 one.")
@click.option("--prompts", "n_prompts", type=click.IntRange(min=0), default=16, show_default=True,
              help="Prompts for the parity and speed report (0 skips the report).")
@click.option("--check", is_flag=True, help="Exit non-zero when top-1 agreement is below --min-top1.")
@click.option("--min-top1", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="The top-1 agreement --check requires of the deployable variant.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def export(checkpoint, out, recipe, fmt, quantize, block_size, isa, per_tensor, fp16, keep_fp32, n_prompts, check, min_top1, overwrite):
    """Export CHECKPOINT to ONNX in OUT, quantize it to int8, and report parity with PyTorch.

    CHECKPOINT is anything `lamini chat` takes: `embedded`, a folder from
    `lamini train`, or a hub id. OUT stands alone: `lamini chat OUT` and
    optimum's ORTModelFor*.from_pretrained(OUT) load it as it is.

    \b
      lamini export embedded runs/teacher-onnx
      lamini export runs/herd/smol-6l runs/onnx/smol-6l --check --min-top1 0.95
      lamini export --herd quickstart-cpu      (every student of runs/herd into runs/herd-onnx)
    """
    from lamini_serve.export.exporter import ExportOptions
    from lamini_serve.export.isa import resolve_isa

    if check and n_prompts == 0:
        raise click.UsageError("--check needs the parity report; drop --prompts 0")
    if quantize != "none":
        resolve_isa(isa)  # before anything is pulled or loaded: a CPU that lacks it fails at once
    opts = ExportOptions(quantize=quantize, isa=isa, block_size=0 if block_size == "auto" else int(block_size), per_channel=not per_tensor, keep_fp32=keep_fp32,
                         fp16=fp16, overwrite=overwrite, format=fmt)
    if recipe is not None:
        if out is not None:
            raise click.UsageError("with --herd, give at most one folder: lamini export --herd RECIPE [OUT]")
        jobs = _herd_jobs(recipe, Path(checkpoint) if checkpoint else None, overwrite)
    else:
        if not checkpoint or out is None:
            raise click.UsageError("give CHECKPOINT and OUT (or --herd RECIPE)")
        jobs = [(checkpoint, out)]
    failed = []
    for source, dest in jobs:
        report = _export_one(source, dest, opts, n_prompts)
        if check and report is not None:
            top1 = report["variants"]["default"]["top1_agreement"]
            if top1 < min_top1:
                failed.append(f"{dest}: top-1 agreement {top1:.1%} < {min_top1:.1%}")
    if failed:
        raise LaminiError("parity check failed: " + "; ".join(failed) + " (see parity.md in each folder; "
                          "try a smaller --block-size, --quantize int8 rather than int4, or --quantize none)")


def _export_one(source: str, dest: Path, opts, n_prompts: int):
    from lamini_serve.export.exporter import export_model
    from lamini_serve.paths import human_size
    from lamini_serve.teacher.embedded import EMBEDDED_ALIASES, teacher_dir

    if source in EMBEDDED_ALIASES:
        teacher_dir(pull=True, log=_log)  # fetched once, visibly; export_model itself never pulls
    manifest = export_model(source, dest, opts, report_prompts=n_prompts, log=_log)
    sizes = ", ".join(f"{kind} {human_size(v['bytes'])}" for kind, v in manifest["variants"].items())
    click.echo(f"Exported {source} to {dest} ({sizes})")
    report = None
    if (dest / "parity.json").is_file():
        report = json.loads((dest / "parity.json").read_text())
        click.echo((dest / "parity.md").read_text())
    return report


def _herd_jobs(recipe_path: Path, out_root: Path | None, overwrite: bool) -> list[tuple[str, Path]]:
    from lamini_serve.train.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    root = Path(recipe.output)
    out_root = out_root or root.with_name(root.name + "-onnx")
    missing = [s.name for s in recipe.students if not (root / s.name / "config.json").is_file()]
    if missing:
        raise LaminiError(f"no trained checkpoint for {', '.join(missing)} under {root}; "
                          f"train first: lamini train {recipe_path}")
    jobs = []
    for s in recipe.students:
        dest = out_root / s.name
        if dest.exists() and not overwrite:
            _log(f"{dest} exists: skipped (pass --overwrite to export it again)")
            continue
        jobs.append((str(root / s.name), dest))
    return jobs
