"""`lamini quickstart`: the whole pipeline on the embedded default, in one command.

    teacher -> data -> train -> export -> eval -> speed -> summary -> (serve + ui)

Each stage runs the stage's own `lamini` command in a subprocess (its output goes to
OUT/logs/<stage>.log), so the quickstart does exactly what a user typing those commands
would. Every command is resumable on its own; the quickstart adds a marker per finished stage
(OUT/.quickstart/<stage>.json, written atomically), so a rerun skips what is done and goes on
where it stopped. Training goes student by student (a finished student is not trained again,
an interrupted one resumes from its last checkpoint).

`--tiny` is the same path on a few dozen instructions and a few steps per student: it checks
the plumbing (minutes), not the quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from lamini_serve.errors import LaminiError
from lamini_serve.paths import atomic_write_text, dir_size

STAGES = ("teacher", "data", "train", "export", "eval", "speed")


@dataclass
class Settings:
    out: Path
    tiny: bool = False

    @property
    def recipe(self) -> Path:
        return self.out / "recipe.yaml"

    @property
    def herd(self) -> Path:
        return self.out / "herd"

    @property
    def data(self) -> Path:
        return self.out / "data"

    def data_args(self) -> list[str]:
        # 60 generation calls make about 220 instructions with their answers, three fifths of what
        # `lamini data run` makes by default (100 calls, about 360): the whole quickstart then fits in
        # about 20 minutes on 2 cores, where the default data alone takes 9
        if self.tiny:
            return ["--calls", "4", "--topic-calls", "2", "--resp-max-tokens", "48"]
        return ["--calls", "42", "--topic-calls", "18"]

    def eval_args(self) -> list[str]:
        common = ["--herd", str(self.recipe), "--out", str(self.out / "eval"), "--instructions", "held-out"]
        if self.tiny:
            return common + ["--tasks", "local_mc,local_qa", "--limit", "4", "--max-instructions", "3",
                             "--max-tokens", "16", "--judge", "none"]
        # the 135M teacher is no judge (it grades every answer A: docs/eval.md), so none here
        return common + ["--limit", "30", "--max-instructions", "16", "--max-tokens", "96", "--judge", "none"]


def write_recipe(s: Settings) -> dict[str, Any]:
    """The shipped quickstart-cpu recipe, its paths moved under OUT (and cut down for --tiny)."""
    import yaml

    from lamini_serve.train.recipe import parse_recipe, shipped_recipes

    raw = yaml.safe_load(shipped_recipes()["quickstart-cpu"].read_text(encoding="utf-8"))
    raw["dataset"] = str(s.data / "dataset.parquet")
    raw["output"] = str(s.herd)
    if s.tiny:
        raw["defaults"].update({"epochs": 1, "max_length": 128, "save_steps": 2, "logging_steps": 1, "max_steps": 2})
        raw["students"] = [st for st in raw["students"] if st["name"] in ("smol-6l", "t5-tiny")]
        for st in raw["students"]:
            st.pop("epochs", None)
            st["effective_batch_size"] = st["per_device_batch_size"] = 4
    parse_recipe(raw, str(s.recipe))  # it must validate before anything trains on it
    text = "# written by lamini quickstart from the shipped quickstart-cpu recipe\n" + yaml.safe_dump(raw, sort_keys=False)
    if not s.recipe.is_file() or s.recipe.read_text(encoding="utf-8") != text:
        atomic_write_text(s.recipe, text)
    return raw


# ---- running stages --------------------------------------------------------------------------
def marker(s: Settings, stage: str) -> Path:
    return s.out / ".quickstart" / f"{stage}.json"


def done(s: Settings, stage: str) -> dict | None:
    try:
        rec = json.loads(marker(s, stage).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if rec.get("tiny") == s.tiny else None


def lamini(s: Settings, stage: str, *args: str) -> None:
    """Run `lamini ARGS` for a stage, its output appended to OUT/logs/<stage>.log."""
    log = s.out / "logs" / f"{stage}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("a", encoding="utf-8") as f:
        f.write(f"\n$ lamini {' '.join(args)}\n")
        f.flush()
        r = subprocess.run([sys.executable, "-m", "lamini_serve", *args], stdout=f, stderr=subprocess.STDOUT,
                           env=env)
    if r.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        raise LaminiError(f"the {stage} stage failed (`lamini {' '.join(args)}` exited {r.returncode}): "
                          f"{tail[0][:300]}; the whole output is in {log}; fix it and run lamini quickstart again "
                          "to go on from this stage")


def run_stage(s: Settings, stage: str) -> dict[str, Any]:
    raw = write_recipe(s) if stage in ("train", "export", "eval", "speed") else None
    info: dict[str, Any] = {}
    if stage == "teacher":
        lamini(s, stage, "teacher", "pull")
    elif stage == "data":
        lamini(s, stage, "data", "run", str(s.data), *s.data_args())
    elif stage == "train":
        for st in raw["students"]:
            if (s.herd / st["name"] / "lamini.json").is_file():
                continue  # trained (the final save is atomic and writes lamini.json last)
            lamini(s, stage, "train", str(s.recipe), "--student", st["name"], "--resume")
    elif stage == "export":
        lamini(s, stage, "export", "--herd", str(s.recipe), "--drop-fp32", "--prompts", "2" if s.tiny else "8")
    elif stage == "eval":
        lamini(s, stage, "eval", *s.eval_args())
    elif stage == "speed":
        info["tokens_per_s"] = measure_speed(s, raw)
    return info


def run(s: Settings, stages: Sequence[str] = STAGES, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every stage not done yet, in order; the summary."""
    from lamini_serve.progress import Progress

    s.out.mkdir(parents=True, exist_ok=True)
    with Progress("lamini quickstart", len(stages), unit="stages") as prog:
        for stage in stages:
            if done(s, stage) is not None:
                log(f"lamini quickstart: {stage}: done before, skipped")
                prog.advance()
                continue
            log(f"lamini quickstart: {stage} ... (log: {s.out / 'logs' / (stage + '.log')})")
            t0 = time.monotonic()
            info = run_stage(s, stage)
            rec = {"stage": stage, "seconds": round(time.monotonic() - t0, 1), "tiny": s.tiny, **info}
            atomic_write_text(marker(s, stage), json.dumps(rec, indent=1) + "\n")
            log(f"lamini quickstart: {stage}: done in {rec['seconds']:.0f} s")
            prog.advance()
    return summary(s)


# ---- speed and the summary ------------------------------------------------------------------
def models(s: Settings, raw: dict) -> list[tuple[str, Path]]:
    """(name, folder) of the teacher, each student and each export, as `lamini serve --herd` names them."""
    from lamini_serve.teacher.release import checkpoint_path

    out = [("teacher", Path(checkpoint_path()))]
    for st in raw["students"]:
        out.append((st["name"], s.herd / st["name"]))
        export = s.herd.with_name(s.herd.name + "-onnx") / st["name"]
        if export.is_dir():
            out.append((f"{st['name']}-int8", export))
    return out


def measure_speed(s: Settings, raw: dict, new_tokens: int = 32, prompts: int = 3) -> dict[str, float]:
    """Tokens/s of each model at batch 1 on `lamini serve`'s in-process engine (greedy, `new_tokens`
    per answer, the mean over a few prompts after one warm-up)."""
    import asyncio

    from lamini_serve.engines.base import Request
    from lamini_serve.engines.inprocess import InProcessEngine
    from lamini_serve.generation import SamplingParams
    from lamini_serve.models import ModelSpec

    questions = ["Give three tips for staying healthy.", "What is the capital of France?",
                 "Write a haiku about the sea.", "Explain what a CPU does."][:prompts + 1]
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    speeds = {}
    for name, folder in models(s, raw):
        spec = ModelSpec.resolve(str(folder))
        eng = InProcessEngine.load(name, spec, spec.runtime)
        try:
            async def answer(i: int, q: str) -> int:
                req = Request(f"speed-{i}", eng.chat_ids([{"role": "user", "content": q}]), params)
                return sum([len(d.token_ids) async for d in eng.generate(req)])

            asyncio.run(answer(0, questions[0]))  # warm-up
            t0, n = time.perf_counter(), 0
            for i, q in enumerate(questions[1:], 1):
                n += asyncio.run(answer(i, q))
            speeds[name] = round(n / (time.perf_counter() - t0), 1)
        finally:
            eng.close()
    return speeds


def summary(s: Settings) -> dict[str, Any]:
    """Each model: size on disk, tokens/s, agreement with the teacher, local-task score, files."""
    raw = write_recipe(s)
    speed = (done(s, "speed") or {}).get("tokens_per_s", {})
    try:
        rep = json.loads((s.out / "eval" / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        rep = {}
    agreement = ((rep.get("agreement") or {}).get("models") or {})
    averages = rep.get("averages") or {}
    rows = []
    for name, folder in models(s, raw):
        avg = averages.get(name) or {}
        rows.append({"model": name, "size_mb": round(dir_size(folder, skip=(".work", "checkpoints"), follow_links=False) / 1e6, 1), "tokens_per_s": speed.get(name),
                     "rouge_l": (agreement.get(name) or {}).get("rouge_l"),
                     "local_tasks": avg.get("value"), "local_tasks_complete": avg.get("complete"),
                     "path": str(folder)})
    seconds = {st: (done(s, st) or {}).get("seconds") for st in STAGES}
    out = {"tiny": s.tiny, "out": str(s.out), "rows": rows, "seconds": seconds,
           "report": str(s.out / "eval" / "report.md")}
    atomic_write_text(s.out / "summary.json", json.dumps(out, indent=1) + "\n")
    atomic_write_text(s.out / "summary.md", summary_markdown(out))
    return out


def summary_markdown(summ: dict) -> str:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = ["| model | size (MB) | tokens/s (batch 1) | ROUGE-L vs teacher | local tasks (%) | files |",
             "|---|---|---|---|---|---|"]
    for r in summ["rows"]:
        local = "-" if r["local_tasks"] is None else f"{100 * r['local_tasks']:.1f}" + ("" if r["local_tasks_complete"] else "*")
        rouge = "(the reference)" if r["model"] == "teacher" else num(r["rouge_l"], ".3f")
        lines.append(f"| {r['model']} | {num(r['size_mb'], '.1f')} | {num(r['tokens_per_s'], '.1f')} | {rouge} | "
                     f"{local} | {r['path']} |")
    secs = summ["seconds"]
    total = sum(v for v in secs.values() if v)
    lines += ["", "Stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items() if v is not None)
              + f"; total {total:.0f} s (this run and the runs it resumed).",
              f"Full evaluation report: {summ['report']}"]
    return "\n".join(lines) + "\n"


# ---- the command ------------------------------------------------------------------------------
def _command():
    import click

    @click.command("quickstart")
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/quickstart"),
                  show_default=True, help="Where everything goes (rerun with the same --out to resume).")
    @click.option("--yes", "-y", is_flag=True, help="Run unattended: no question before starting.")
    @click.option("--no-ui", is_flag=True, help="Stop after the summary instead of opening the browser page.")
    @click.option("--tiny", is_flag=True, help="A reduced run (a few dozen instructions, a few steps): checks the "
                                               "plumbing in minutes, not the quality.")
    @click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True,
                  help="The page's port (lamini ui).")
    def quickstart(out, yes, no_ui, tiny, port):
        """The whole pipeline on the embedded teacher and this CPU, in one command.

        \b
        The embedded teacher writes instructions from the built-in seeds and answers them
        (lamini data), a herd of students learns from it (lamini train quickstart-cpu), each
        student is exported to int8 ONNX with its parity report (lamini export), scored on the
        offline tasks and against the teacher (lamini eval), timed, and then served beside the
        teacher in the browser (lamini serve + lamini ui).

        \b
        About 20-30 minutes on a 2-core laptop; Ctrl-C at any time and run it again to go on.
        """
        s = Settings(out=out, tiny=tiny)
        if not yes:
            if not sys.stdin.isatty():
                raise LaminiError("lamini quickstart asks before it starts; pass --yes to run it unattended")
            what = "a reduced run (minutes)" if tiny else "about 20-30 minutes on a 2-core CPU"
            click.confirm(f"Run the whole pipeline into {out} ({what})?", default=True, abort=True)
        result = run(s, log=lambda m: click.echo(m, err=True))
        click.echo(summary_markdown(result))
        if no_ui:
            return
        click.echo(f"lamini quickstart: starting the page: lamini ui --herd {s.recipe} --port {port}", err=True)
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "lamini_serve", "ui", "--herd", str(s.recipe),
                                  "--port", str(port)])

    return quickstart


quickstart = _command()
