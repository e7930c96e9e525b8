"""`lamini train RECIPE`: train every student of a herd recipe (or one)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import click


@click.command()
@click.argument("recipe")
@click.option("--student", "students", multiple=True, help="Train only this student (repeatable).")
@click.option("--resume", is_flag=True, help="Continue each student from its last checkpoint.")
@click.option("--dataset", default=None, help="Override the recipe's dataset.")
@click.option("--output", default=None, help="Override the recipe's output folder.")
@click.option("--max-steps", type=int, default=None, help="Cap the optimizer steps of every student (quick looks).")
@click.option("--launch", default=None,
              help='Run under a launcher, e.g. "accelerate launch --num_processes 8" or "torchrun --nproc_per_node 4".')
@click.option("--dry-run", is_flag=True, help="Validate the recipe and print the plan; train nothing.")
def train(recipe, students, resume, dataset, output, max_steps, launch, dry_run):
    """Fine-tune the students of RECIPE (a YAML file, or a shipped name: quickstart-cpu, lamini-paper).

    \b
      lamini train quickstart-cpu                       # a small herd on this CPU
      lamini train lamini-paper --student lamini-flan-t5-77m
      lamini train lamini-paper --launch "accelerate launch --num_processes 8"
    """
    import dataclasses

    from lamini_serve.train.recipe import load_recipe

    r = load_recipe(recipe)
    if dataset:
        r.dataset = dataset
    if output:
        r.output = output
    chosen = [r.student(n) for n in students] if students else r.students
    if max_steps is not None:
        chosen = [dataclasses.replace(s, args=dataclasses.replace(s.args, max_steps=max_steps)) for s in chosen]
    if dry_run:
        for s in chosen:
            click.echo(f"{s.name}: base={s.base or s.init} epochs={s.args.epochs} "
                       f"lr={s.args.learning_rate or 'family default'} batch={s.args.effective_batch_size}")
        return
    if launch:
        argv = [a for a in sys.argv[1:]]
        i = argv.index("--launch")
        del argv[i:i + 2]
        cmd = shlex.split(launch) + ["-m", "lamini_serve"] + argv
        click.echo(f"Running: {' '.join(shlex.quote(c) for c in cmd)}", err=True)
        raise SystemExit(subprocess.call(cmd))
    from lamini_serve.train.trainer import is_main, train_student

    results = [train_student(r, s, resume=resume) for s in chosen]
    if is_main():
        for s in results:
            extra = (f", ROUGE-L vs teacher {s['rouge_l_before']} -> {s['rouge_l_after']}" if "rouge_l_after" in s else "")
            click.echo(f"{s['student']}: loss {s['train_loss']}, {s['steps']} steps, {s['seconds']} s{extra}")
        from pathlib import Path

        from lamini_serve.paths import atomic_write_text

        atomic_write_text(Path(r.output) / "herd.json", json.dumps(results, indent=2) + "\n")
