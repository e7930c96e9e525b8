"""Train one student with the transformers Trainer (under accelerate when launched so)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from lamini_serve.checkpoint import write_metadata
from lamini_serve.errors import LaminiError
from lamini_serve.models import Family
from lamini_serve.train.data import (
    CausalCollator,
    ListDataset,
    count_tokens,
    count_truncated,
    family_encoder,
    load_pairs,
    pack,
    split_pairs,
)
from lamini_serve.train.herd import write_herd_index
from lamini_serve.train.recipe import Recipe, Student

FAMILY_LR = {Family.SEQ2SEQ: 5e-4, Family.CAUSAL: 2e-5}


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def grad_accum(effective: int, per_device: int, world: int) -> int:
    """Accumulation steps so that per_device x world x steps reaches the effective batch (at least 1)."""
    return max(1, math.ceil(effective / (per_device * world)))


def use_bf16(flag: str, cuda: bool | None = None, gpu_bf16: bool | None = None, cpu_bf16: bool | None = None) -> bool:
    """Mixed precision in bfloat16 (fp32 master weights, bf16 matmuls under autocast)?

    `auto`: on a GPU that has bfloat16 (Ampere and newer), and on a CPU that multiplies
    bfloat16 in hardware (AVX-512 BF16 or AMX); fp32 elsewhere, where bf16 would be
    emulated and slower. `true` forces it on a CPU; on a GPU without bf16 it is an error.
    """
    import torch

    from lamini_serve.hardware import cpu_native_bf16

    if flag == "false":
        return False
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        ok = torch.cuda.is_bf16_supported(including_emulation=False) if gpu_bf16 is None else gpu_bf16
        if flag == "true" and not ok:
            raise LaminiError("bf16: true, but this GPU has no bfloat16 (it needs Ampere or newer); "
                              "set bf16: auto or false")
        return ok
    return flag == "true" or (cpu_native_bf16() if cpu_bf16 is None else cpu_bf16)


class _JsonlLogger:
    def __new__(cls, path: Path):
        from transformers import TrainerCallback

        class Logger(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                if state.is_world_process_zero and logs:
                    with open(path, "a", encoding="utf-8") as f:
                        f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")

        return Logger()


def answers(model, tok, spec, instructions: list[str], max_new_tokens: int = 64) -> list[str]:
    """Answers of an in-memory model (for the before/after comparison)."""
    from lamini_serve.quality import greedy_answers

    return [c.text for c in greedy_answers(model, tok, spec, instructions, max_new_tokens, repetition_penalty=1.1)]


def train_student(recipe: Recipe, student: Student, resume: bool = False, compare: int = 32,
                  log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """Fine-tune one student and save it atomically to output/<name>; returns its summary."""
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from lamini_serve.train.loss import answer_only_trainer_class, supports_answer_only
    from lamini_serve.train.students import build_student

    args = student.args
    out_root = Path(recipe.output)
    final = out_root / student.name
    work = out_root / ".work" / student.name
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    pairs = load_pairs(recipe.dataset)
    train_pairs, held_out = split_pairs(pairs, args.eval_share, args.seed)
    dropped = 0
    if args.cut_answers == "drop":
        kept = [p for p in train_pairs if not p["truncated"]]
        dropped = len(train_pairs) - len(kept)
        if not kept:
            raise LaminiError(f"{student.name}: every answer was cut at the teacher's token limit; "
                              f"set cut_answers: keep, or make the data again with a higher --resp-max-tokens")
        train_pairs = kept
    model, tok, spec = build_student(student, recipe.teacher)
    lr = args.learning_rate or FAMILY_LR[spec.family]
    encode = family_encoder(spec.family)
    rows = encode(train_pairs, spec, tok, args.max_length)
    if not rows:
        raise LaminiError(f"{student.name}: no training example fits max_length {args.max_length}")
    real_tokens, label_tokens = count_tokens(rows)
    bf16 = use_bf16(args.bf16)
    tspec = None
    if student.kd is not None:
        from lamini_serve.teacher.embedded import resolve_model
        from lamini_serve.train.kd import check_same_vocabulary

        tspec = resolve_model(recipe.teacher)
        if spec.family is not Family.CAUSAL or tspec.family is not Family.CAUSAL:
            raise LaminiError(f"{student.name}: word-level KD works between decoder-only teacher and student; "
                              f"remove its kd section")
        check_same_vocabulary(tok, tspec.load_tokenizer(), student.name)
    cached_kd = student.kd is not None and student.kd.cached_k > 0 and supports_answer_only(model)
    junctions = _hidden_junctions(student, spec, model, cached_kd, log)
    if cached_kd:
        from lamini_serve.train.kd import cached_teacher_targets

        device = "cuda" if torch.cuda.is_available() else "cpu"
        targets = cached_teacher_targets(out_root / ".work", recipe.teacher,
                                         lambda: tspec.load_model(device=device, dtype="float32"), rows,
                                         student.kd.cached_k, student.kd.temperature, bf16, log,
                                         layers=[t for _, t in junctions])
        for row, target in zip(rows, targets):
            row["kd"] = [target]
    packed = spec.family is Family.CAUSAL and args.packing
    if packed:
        rows = pack(rows, args.max_length, args.seed)
    collator = (CausalCollator(pad_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
                if spec.family is Family.CAUSAL else
                DataCollatorForSeq2Seq(tok, model=model, label_pad_token_id=-100, padding=True))
    world = world_size()
    accum = grad_accum(args.effective_batch_size, args.per_device_batch_size, world)
    compare_set = held_out[:compare]
    before = []
    if compare_set and is_main():
        log(f"{student.name}: answering {len(compare_set)} held-out instructions before training")
        before = answers(model, tok, spec, [p["instruction"] for p in compare_set])

    metrics_path = work / "metrics.jsonl"
    checkpoints = sorted((work / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) if resume else []
    _trim_metrics(metrics_path, int(checkpoints[-1].name.split("-")[-1]) if checkpoints else 0)
    report = ["tensorboard"] if _has_tensorboard() else []
    # The Trainer's Accelerator reads its precision from this variable, which TrainingArguments
    # sets for bf16=True and leaves alone otherwise: set it either way, so that a student in fp32
    # after one in bf16 (one process, or a launcher config that says bf16) really runs in fp32.
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if bf16 else "no"
    targs = TrainingArguments(
        output_dir=str(work / "checkpoints"), per_device_train_batch_size=args.per_device_batch_size,
        gradient_accumulation_steps=accum, learning_rate=lr, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, lr_scheduler_type="linear", num_train_epochs=args.epochs,
        max_steps=args.max_steps, seed=args.seed, bf16=bf16, logging_steps=args.logging_steps,
        save_steps=args.save_steps, save_total_limit=2, report_to=report, logging_dir=str(work / "tensorboard"),
        remove_unused_columns=False, dataloader_num_workers=0, optim="adamw_torch",
        gradient_checkpointing=args.gradient_checkpointing, group_by_length=spec.family is Family.SEQ2SEQ,
        disable_tqdm=not sys.stderr.isatty(), use_cpu=not torch.cuda.is_available(), save_safetensors=True,
    )
    common = dict(model=model, args=targs, train_dataset=ListDataset(rows), data_collator=collator,
                  callbacks=[_JsonlLogger(metrics_path)])
    answer_only = (student.kd is None and spec.family is Family.CAUSAL and args.answer_only_logits
                   and supports_answer_only(model) and targs.n_gpu <= 1)  # not under nn.DataParallel
    if cached_kd:
        from lamini_serve.train.kd import cached_kd_trainer_class

        if targs.n_gpu > 1:
            raise LaminiError(f"{student.name}: word-level KD from cached targets runs one process per GPU; launch "
                              f"with --launch \"accelerate launch\" (or set kd.top_k: 0 for the live teacher)")
        trainer = cached_kd_trainer_class()(**common, kd=student.kd, junctions=junctions)
    elif student.kd is not None:
        from lamini_serve.train.kd import kd_trainer_class

        trainer = kd_trainer_class()(**common, teacher=tspec.load_model(device="cpu", dtype="float32"), kd=student.kd)
    elif answer_only:
        trainer = answer_only_trainer_class()(**common)
    else:
        trainer = Trainer(**common)
    precision = "bf16 mixed" if trainer.accelerator.mixed_precision == "bf16" else "fp32"  # as the Trainer runs it
    if resume and not checkpoints:
        log(f"{student.name}: no checkpoint to resume from in {work / 'checkpoints'}; starting afresh")
    what = (f"{len(rows)} {'packed rows' if packed else 'examples'} ({real_tokens} tokens, {label_tokens} trained on)"
            if spec.family is Family.CAUSAL else
            f"{len(rows)} examples ({real_tokens} instruction tokens, {label_tokens} answer tokens)")
    log(f"{student.name}: {spec.family.value}, {what}, lr {lr}, batch {args.per_device_batch_size} x {world} "
        f"x {accum} accumulation, {precision} precision")
    cut = count_truncated(train_pairs)
    if dropped:
        log(f"{student.name}: {dropped} answers cut at the teacher's token limit were left out (cut_answers: drop)")
    if cut:
        log(f"{student.name}: {cut} of {len(train_pairs)} answers were cut at the teacher's token limit; "
            f"they are trained without an end-of-sequence token")
    t0 = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=True if checkpoints else None)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        if not isinstance(exc, (torch.OutOfMemoryError, MemoryError)) and "memory" not in str(exc).lower():
            raise
        raise LaminiError(
            f"{student.name} does not fit in memory at per_device_batch_size {args.per_device_batch_size}, "
            f"max_length {args.max_length}; lower per_device_batch_size (accumulation keeps the effective batch) "
            f"or set gradient_checkpointing: true for this student, then rerun with --resume"
        ) from None
    seconds = time.time() - t0
    summary: dict[str, Any] = {
        "student": student.name, "family": spec.family.value, "prompt_format": spec.prompt_format.value,
        "base": student.base or ("teacher layers" if student.init.from_teacher else "from config"),
        "train_loss": round(float(result.training_loss), 4), "steps": trainer.state.global_step,
        "seconds": round(seconds, 1), "examples": len(train_pairs), "truncated_answers": cut,
        "dropped_cut_answers": dropped, "tokens": real_tokens, "learning_rate": lr,
        "effective_batch": args.per_device_batch_size * world * accum, "precision": precision,
        "packing": packed, "answer_only_logits": answer_only,
        "kd": (dataclasses.asdict(student.kd) | {"top_k": student.kd.cached_k}
               | ({"junctions": [list(j) for j in junctions]} if junctions else {})) if student.kd else None,
    }
    if is_main():
        _save(trainer, tok, spec, student, recipe, summary, before, compare_set, metrics_path, final, seconds, log)
        write_herd_index(out_root)
    _barrier()  # the other ranks wait for the save before they move on (or exit)
    return summary


def _hidden_junctions(student: Student, spec, model, cached_kd: bool, log) -> list[tuple[int, int]]:
    """(student block, teacher block) pairs where kd.hidden matches hidden states (none without it)."""
    if student.kd is None or not student.kd.hidden:
        return []
    from lamini_serve.train.kd import junctions
    from lamini_serve.train.recipe import HIDDEN_NEEDS_CUT

    kept = spec.metadata.get("kept_layers")
    if kept is None:
        raise LaminiError(f"{student.name}: {HIDDEN_NEEDS_CUT}")
    found = junctions(kept)
    if not found:
        raise LaminiError(f"{student.name}: kd.hidden matches hidden states after a gap in the teacher blocks the "
                          f"student keeps, and {kept} has none; keep others (init.keep) or set kd.hidden: 0")
    if not cached_kd:
        raise LaminiError(f"{student.name}: kd.hidden needs cached KD targets, which a {model.config.model_type} "
                          f"student cannot use (its logits are not lm_head(hidden state)); set kd.hidden: 0")
    log(f"{student.name}: hidden-state KD (weight {student.kd.hidden}) into "
        + ", ".join(f"block {s} (teacher block {t})" for s, t in found))
    return found


def _trim_metrics(path: Path, upto_step: int) -> None:
    """Keep the logged steps a resumed run will not log again (none for a fresh run)."""
    if not is_main() or not path.exists():
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines()
            if ln.strip() and upto_step and json.loads(ln).get("step", 0) <= upto_step]
    path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown_distributed() -> None:
    """Leave the process group cleanly: a gloo rank that exits with it alive aborts (SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _save(trainer, tok, spec, student, recipe, summary, before, compare_set, metrics_path, final, seconds, log) -> None:
    from lamini_serve.paths import atomic_dir
    from lamini_serve.rouge import rouge_l
    from lamini_serve.train.metrics import plot_curve

    args = student.args
    lr = summary["learning_rate"]
    if compare_set:
        after = answers(trainer.model, tok, spec, [p["instruction"] for p in compare_set])
        ref = [p["response"] for p in compare_set]
        summary["rouge_l_before"] = round(sum(map(rouge_l, before, ref)) / len(ref), 4)
        summary["rouge_l_after"] = round(sum(map(rouge_l, after, ref)) / len(ref), 4)
        summary["compared_on"] = len(ref)
    with atomic_dir(final, overwrite=True) as staging:
        trainer.model.save_pretrained(staging, safe_serialization=True)
        tok.padding_side = "right"
        if spec.family is Family.CAUSAL:
            # vLLM's chat endpoint prompts through the tokenizer's chat template: an alpaca/raw
            # student gets one that renders its own format (not a ChatML one from its base).
            from lamini_serve.chat_templates import apply_to_tokenizer

            apply_to_tokenizer(tok, spec.prompt_format)
        tok.save_pretrained(staging)
        write_metadata(staging, spec.family, spec.prompt_format, role="student", student=student.name,
                       base=summary["base"], training=summary,
                       args=dataclasses.asdict(args) | {"learning_rate": lr})
        plotted = plot_curve(metrics_path, staging / "training_curve.png", f"{student.name}: training loss")
        (staging / "metrics.jsonl").write_bytes(metrics_path.read_bytes() if metrics_path.exists() else b"")
        (staging / "README.md").write_text(model_card(student, summary, recipe, plotted), encoding="utf-8")
        if Path(recipe.source).is_file():
            (staging / "recipe.yaml").write_text(Path(recipe.source).read_text(encoding="utf-8"), encoding="utf-8")
    log(f"{student.name}: saved to {final} (loss {summary['train_loss']}, {seconds:.0f} s)")


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def model_card(student: Student, s: dict[str, Any], recipe: Recipe, plotted: bool) -> str:
    lines = [
        f"# {student.name}", "",
        f"A LaMini-style student distilled with lamini-serve from the answers of `{recipe.teacher}`.", "",
        "| | |", "| --- | --- |",
        f"| family | {s['family']} |", f"| prompt format | {s['prompt_format']} |", f"| initial weights | {s['base']} |",
        f"| training examples | {s['examples']} ({s['tokens']} tokens) |", f"| dataset | `{recipe.dataset}` |",
        f"| steps | {s['steps']} |", f"| effective batch | {s['effective_batch']} |", f"| learning rate | {s['learning_rate']} |",
        f"| precision | {s.get('precision', 'fp32')} |", f"| packing | {s['packing']} |", f"| lm_head on answer tokens only | {s.get('answer_only_logits', False)} |",
        f"| final training loss | {s['train_loss']} |", f"| time | {s['seconds']} s |",
    ]
    if "rouge_l_after" in s:
        lines.append(f"| ROUGE-L vs the teacher on {s['compared_on']} held-out instructions | "
                     f"{s['rouge_l_before']} before, {s['rouge_l_after']} after |")
    if student.init.from_config:
        lines += ["", "Built from a config and trained from scratch on a small dataset: it shows that the "
                      "encoder-decoder path works end to end, not answer quality."]
    if plotted:
        lines += ["", "![training curve](training_curve.png)"]
    lines += ["", f"Use it: `lamini chat {Path(recipe.output) / student.name}`, or load the folder with transformers "
                  f"(prompt it in the `{s['prompt_format']}` format; `lamini.json` records it).", ""]
    return "\n".join(lines)
