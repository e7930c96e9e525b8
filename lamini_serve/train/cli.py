"""`lamini train RECIPE`: train every student of a herd recipe (or one)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

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
@click.option("--parallel-students", is_flag=True, help="Train one student per device at once (see --devices).")
@click.option("--devices", default=None, help="With --parallel-students: e.g. 0,1,2,3 (GPU ids) or cpu,cpu.")
@click.option("--dry-run", is_flag=True, help="Validate the recipe and print the plan; train nothing.")
def train(recipe, students, resume, dataset, output, max_steps, launch, parallel_students, devices, dry_run):
    """Fine-tune the students of RECIPE (a YAML file, or a shipped name: quickstart-cpu, lamini-paper).

    \b
      lamini train quickstart-cpu                       # a small herd on this CPU
      lamini train lamini-paper --student lamini-flan-t5-77m
      lamini train lamini-paper --launch "accelerate launch --num_processes 8"
    """
    import dataclasses

    from lamini_serve.errors import LaminiError
    from lamini_serve.train.data import check_dataset
    from lamini_serve.train.recipe import load_recipe

    r = load_recipe(recipe)
    if dataset:
        r.dataset = dataset
    if output:
        r.output = output
    chosen = [r.student(n) for n in students] if students else r.students
    if max_steps is not None:
        try:
            chosen = [dataclasses.replace(s, args=dataclasses.replace(s.args, max_steps=max_steps)) for s in chosen]
        except LaminiError as exc:
            raise LaminiError(f"--max-steps {max_steps}: {exc}") from None
    # Before anything starts (a launcher, one child per device, a model load): a missing or
    # unreadable dataset would otherwise fail in every process, or pass a dry run.
    checked = check_dataset(r.dataset)
    if dry_run:
        click.echo(f"dataset: {checked}")
        for s in chosen:
            click.echo(f"{s.name}: base={s.base or s.init} epochs={s.args.epochs} "
                       f"lr={s.args.learning_rate or 'family default'} batch={s.args.effective_batch_size}")
        return
    from lamini_serve.paths import clean_stale_tmp

    # a save killed half way (SIGKILL, power cut) left a staging copy of a whole model here
    for stale in clean_stale_tmp(Path(r.output)):
        click.echo(f"Removed {stale.name}, left by an interrupted run", err=True)
    if launch:
        cmd = launcher_command(launch) + ["-m", "lamini_serve"] + _argv_without(sys.argv[1:], "--launch")
        click.echo(f"Running: {' '.join(shlex.quote(c) for c in cmd)}", err=True)
        raise SystemExit(subprocess.call(cmd))
    if parallel_students:
        if not devices:
            raise click.UsageError("--parallel-students needs --devices, e.g. --devices 0,1,2,3")
        argv = _argv_without(_argv_without(sys.argv[1:], "--devices"), "--parallel-students", takes_value=False)
        argv = _argv_without(argv, "--student")
        raise SystemExit(run_parallel([s.name for s in chosen], devices.split(","), argv, r.output))
    from lamini_serve.train.trainer import is_main, shutdown_distributed, train_student

    try:
        # Each student updates OUT/herd.json from the student folders as it is saved.
        results = [train_student(r, s, resume=resume) for s in chosen]
    finally:
        shutdown_distributed()
    if is_main():
        for s in results:
            extra = (f", ROUGE-L vs teacher {s['rouge_l_before']} -> {s['rouge_l_after']}" if "rouge_l_after" in s else "")
            click.echo(f"{s['student']}: loss {s['train_loss']}, {s['steps']} steps, {s['seconds']} s{extra}")


def _argv_without(argv: list[str], flag: str, takes_value: bool = True) -> list[str]:
    out, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        if a == flag:
            skip = 1 if takes_value else 0
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    return out


def launcher_command(launch: str) -> list[str]:
    """The launcher's argv; a shipped accelerate config name after --config_file becomes its path."""
    from importlib import resources
    from pathlib import Path

    cmd = shlex.split(launch)
    shipped = resources.files("lamini_serve").joinpath("recipes", "accelerate")
    for i, tok in enumerate(cmd[:-1]):
        if tok == "--config_file" and not Path(cmd[i + 1]).is_file():
            cand = shipped.joinpath(cmd[i + 1].removesuffix(".yaml") + ".yaml")
            if not cand.is_file():
                names = sorted(Path(str(f)).stem for f in shipped.iterdir() if str(f).endswith(".yaml"))
                raise click.UsageError(f"--config_file {cmd[i + 1]}: no such file; shipped configs: {', '.join(names)}")
            cmd[i + 1] = str(cand)
    return cmd


def run_parallel(names: list[str], devices: list[str], argv: list[str], output: str) -> int:
    """One `lamini train --student NAME` per device at a time, until every student is done."""
    import os
    import time
    from pathlib import Path

    clean = list(argv)
    logs = Path(output)
    logs.mkdir(parents=True, exist_ok=True)
    queue = list(names)
    running: dict[str, tuple[subprocess.Popen, str]] = {}
    free = list(devices)
    failed = []
    while queue or running:
        while queue and free:
            dev, name = free.pop(0), queue.pop(0)
            env = dict(os.environ, CUDA_VISIBLE_DEVICES="" if dev.strip() == "cpu" else dev.strip())
            log_path = logs / f"train-{name}.log"
            log = open(log_path, "w")
            proc = subprocess.Popen([sys.executable, "-m", "lamini_serve"] + clean + ["--student", name],
                                    env=env, stdout=log, stderr=subprocess.STDOUT)
            running[name] = (proc, dev)
            click.echo(f"{name}: started on device {dev} (log: {log_path})", err=True)
        time.sleep(1)
        for name, (proc, dev) in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                free.append(dev)
                ok = proc.returncode == 0
                click.echo(f"{name}: {'done' if ok else f'FAILED (exit {proc.returncode}), see {logs}/train-{name}.log'}",
                           err=True)
                if not ok:
                    failed.append(name)
    from lamini_serve.train.herd import HERD_FILE, write_herd_index

    # Each child already wrote it; once more from here, after every child, in case one was killed.
    index = write_herd_index(logs)
    click.echo(f"{logs / HERD_FILE}: {len(index['students'])} students", err=True)
    if failed:
        click.echo(f"failed: {', '.join(failed)}", err=True)
    return 1 if failed else 0
