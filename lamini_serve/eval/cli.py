"""`lamini eval`: zero-shot tasks through lm-evaluation-harness, agreement with the teacher,
an automatic A-D rater; `lamini eval tasks`, `lamini eval report`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from lamini_serve.errors import LaminiError


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def _need_lm_eval() -> None:
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise LaminiError("lamini eval needs lm-evaluation-harness; install it: pip install 'lamini-serve[eval]'")


@click.group(invoke_without_command=True)
@click.option("-m", "--model", "models", multiple=True, metavar="NAME=PATH | PATH | NAME=URL#MODEL",
              help="A model to score (repeatable): a checkpoint folder or hub id, an export folder, `embedded`, or "
                   "a model behind an OpenAI-compatible endpoint (http://HOST:PORT/v1#MODEL, with --tokenizer).")
@click.option("--herd", default=None, metavar="DIR|RECIPE",
              help="Score a trained herd: the teacher, every student, their exports and their base models.")
@click.option("--tasks", "task_spec", default="local", show_default=True, metavar="LIST",
              help="Comma-separated: `local` (offline, shipped), `paper` (the paper's 15, from the hub), any "
                   "lm-eval task name, or `none` (agreement only).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many documents per task.")
@click.option("--batch-size", default="8", show_default=True, help="lm-eval's batch size (or `auto`).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1...")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/eval"),
              show_default=True, help="Where scores, answers and the report go (rerun to resume).")
@click.option("--teacher", "teacher_name", default=None, metavar="NAME",
              help="The model the others are compared with (default: the one named teacher).")
@click.option("--tokenizer", "tokenizers", multiple=True, metavar="NAME=PATH",
              help="The tokenizer (and prompt format) of an endpoint model: its checkpoint folder or hub id.")
@click.option("--prompt", "prompt_mode", type=click.Choice(["auto", "model", "raw"]), default="auto",
              show_default=True,
              help="auto: students and teachers in their own prompt format (as the paper scored them), base models "
                   "on the raw text; model or raw: every model so.")
@click.option("--bases/--no-bases", default=True, show_default=True,
              help="With --herd, also score each student's base model (when it is a hub id or a folder).")
@click.option("--agreement/--no-agreement", default=True, show_default=True,
              help="Compare every model's answers with the teacher's on held-out instructions.")
@click.option("--instructions", default="builtin", show_default=True, metavar="builtin|held-out|FILE.jsonl",
              help="The agreement's instructions: the 72 built-in ones, the herd data's held-out split, or yours.")
@click.option("--max-instructions", type=click.IntRange(min=1), default=None, help="Use only the first N.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=128, show_default=True,
              help="Longest answer (tokens) in the agreement.")
@click.option("--judge", default="teacher", show_default=True, metavar="NAME|URL#MODEL|none",
              help="Who grades the answers A-D: a model being scored, a model behind an endpoint, or none.")
@click.option("--api-key-env", default="LAMINI_API_KEY", show_default=True, metavar="NAME",
              help="The environment variable that holds the endpoints' API key.")
@click.pass_context
def eval(ctx, models, herd, task_spec, limit, batch_size, device, out, teacher_name, tokenizers, prompt_mode, bases,
         agreement, instructions, max_instructions, max_tokens, judge, api_key_env):  # noqa: A001
    """Score models the way the LaMini-LM paper did, and against the teacher.

    \b
    lamini eval --herd quickstart-cpu                    # the herd, its exports, the teacher
    lamini eval -m embedded -m runs/herd/smol-6l --tasks local --limit 20
    lamini eval -m smol=http://127.0.0.1:8000/v1#smol --tokenizer smol=runs/herd/smol-6l
    lamini eval -m gpt2 --tasks paper --device cuda      # with the Hugging Face hub

    Each (model, task) result is stored under OUT/scores; a rerun skips what is done.
    The report: OUT/report.md, OUT/report.json, OUT/scores.png and OUT/judge.png.
    """
    if ctx.invoked_subcommand is not None:
        return
    if not models and herd is None:
        raise click.UsageError("name models to score (-m embedded -m runs/herd/smol-6l) or a herd (--herd RECIPE)")
    _need_lm_eval()
    bs: Any = batch_size if batch_size == "auto" else int(batch_size) if batch_size.isdigit() and int(batch_size) else None
    if bs is None:
        raise click.BadParameter("a positive number or auto", param_hint="--batch-size")
    api_key = os.environ.get(api_key_env)
    run(models, herd, task_spec, limit, bs, device, out, teacher_name, tokenizers, prompt_mode, bases, agreement,
        instructions, max_instructions, max_tokens, judge, api_key)


def plan_models(models, herd, teacher_name, tokenizers, prompt_mode, bases, api_key):
    """The `EvalModel`s to score, from -m and --herd (as `lamini serve` names them)."""
    from lamini_serve.eval.runner import EvalModel
    from lamini_serve.models import ModelSpec
    from lamini_serve.serve.registry import UsageProblem, parse_pairs, plan

    planned = plan(models, herd, teacher=teacher_name, log=_err)
    toks = dict(parse_pairs(tokenizers, "--tokenizer", "PATH"))
    for name in toks:
        if name not in {p.name for p in planned}:
            raise UsageProblem(f"--tokenizer {name}=...: no model of that name is scored")
    out: list[EvalModel] = []
    for p in planned:
        if p.kind == "remote":
            if p.name not in toks:
                raise UsageProblem(f"{p.name} is behind an endpoint; give its tokenizer (the checkpoint folder or hub "
                                   f"id it was served from): --tokenizer {p.name}=PATH")
            base_url, _, served = p.source.partition("#")
            spec = ModelSpec.resolve(toks[p.name])
            m = EvalModel(p.name, base_url, "endpoint", p.role, spec, served or p.name, extra={"api_key": api_key})
        else:
            kind = "onnx" if p.kind == "onnx" else "torch"  # decoder-only models are scored in-process, not on vLLM
            role = p.role
            of = None
            if kind == "onnx" and p.origin.startswith("export of "):
                role, of = "export", p.name[:-len("-int8")]
            m = EvalModel(p.name, p.source, kind, role, p.spec, of=of)
        # lamini.json records the format; the LaMini-LM releases on the hub are instruction models too
        has_format = bool(m.spec is not None and m.spec.metadata.get("prompt_format")) or \
            m.source.lower().startswith("mbzuai/lamini-")
        m.prompted = {"auto": has_format, "model": True, "raw": False}[prompt_mode]
        out.append(m)
    if herd is not None:
        out += _bases(herd, out, prompt_mode, score=bases)
    return out


def _bases(herd, models, prompt_mode, score: bool = True):
    """Each herd student's base model (a hub id or a folder), recorded on the student; with `score`,
    the base models themselves, scored on the raw text (a base two students share, once)."""
    from lamini_serve.eval.runner import EvalModel
    from lamini_serve.models import ModelSpec
    from lamini_serve.serve.registry import herd_index_of

    _, index, _ = herd_index_of(Path(herd))
    by_name = {m.name: m for m in models}
    out, seen = [], set()
    for s in index.get("students", []):
        base = s.get("base") or ""
        for m in models:
            if m.name == s["name"] or m.of == s["name"]:
                m.extra["base"] = base
        if not score or not base or " " in base or base in seen or s["name"] not in by_name:
            continue  # "teacher layers", "from config": no base model of its own
        seen.add(base)
        try:
            spec = ModelSpec.resolve(base)
        except LaminiError as exc:
            _err(f"lamini eval: {s['name']}'s base model {base} is not scored: {exc}")
            continue
        out.append(EvalModel(f"{s['name']}-base", base, "torch", "base", spec, of=s["name"],
                             prompted=prompt_mode == "model"))
    return out


def _herd_data(herd):
    """(data folder, eval share, seed) of a herd's recipe, for --instructions held-out."""
    if herd is None or Path(herd).is_dir():
        return None
    from lamini_serve.serve.registry import herd_recipe

    r = herd_recipe(Path(herd))
    return (r.dataset, r.defaults.eval_share, r.defaults.seed)


def run(models, herd, task_spec, limit, batch_size, device, out, teacher_name, tokenizers, prompt_mode, bases,
        agreement, instructions, max_instructions, max_tokens, judge, api_key):
    from lamini_serve.eval import report, tasks
    from lamini_serve.eval.runner import Settings, evaluate
    from lamini_serve.progress import Progress

    refs = [] if task_spec.strip() == "none" else tasks.resolve(task_spec)
    ms = plan_models(models, herd, teacher_name, tokenizers, prompt_mode, bases, api_key)
    settings = Settings(limit=limit, batch_size=batch_size, device=device, api_key=api_key)
    teacher = next((m for m in ms if m.role == "teacher"), None)
    iset = None
    if agreement:
        from lamini_serve.eval.agreement import load_instructions

        if teacher is None:
            raise LaminiError("the agreement compares models with a teacher, and none is scored; add one "
                              "(-m embedded, or --teacher NAME) or pass --no-agreement")
        iset = load_instructions(instructions, _herd_data(herd), max_instructions)
    judge_model = _judge_model(judge, ms, teacher, api_key) if iset is not None and judge != "none" else None
    hashes = {}
    outcome = None
    ag = jd = None
    # one display for the whole run: each (model, task), then each model's answers and their grading
    steps = len(ms) * len(refs) + (len(ms) * (2 if judge_model else 1) if iset is not None else 0)
    with Progress("lamini eval", steps, unit="steps") as prog:
        if refs:
            outcome = evaluate(ms, refs, out, settings, progress=prog, log=_err)
        if iset is not None:
            ag, jd = _agreement(ms, teacher, iset, out, max_tokens, judge_model, prog)
    for m in ms:
        hashes[m.name] = m.hash()
    model_rows = [{"name": m.name, "source": m.source, "kind": m.kind, "role": m.role, "of": m.of, "prompt": m.prompt,
                   "family": m.spec.family.value if m.spec is not None else None, "hash": hashes[m.name],
                   "base": m.extra.get("base")} for m in ms]
    task_rows = []
    for t in refs:
        version = next((s.get("task_version") for s in (outcome.scores if outcome else []) if s["task"] == t.name), None)
        metric = t.metric or next((s["metric"] for s in (outcome.scores if outcome else []) if s["task"] == t.name), "")
        task_rows.append({"name": t.name, "label": t.label, "metric": metric, "version": version,
                          "local": t.is_local})
    rep = report.build(model_rows, task_rows, outcome.scores if outcome else [], outcome.failures if outcome else [],
                       ag, jd, {"limit": limit, "tasks": task_spec, "device": device, "prompt": prompt_mode})
    files = report.write(rep, out)
    click.echo(report.markdown(rep))
    if rep.get("judge") and rep["judge"].get("warning"):
        _err(f"lamini eval: {rep['judge']['warning']}")
    if outcome and outcome.reused:
        _err(f"lamini eval: {outcome.reused} (model, task) results reused from {out / 'scores'}")
    _err("lamini eval: wrote " + ", ".join(str(f) for f in files))
    if outcome and outcome.failures and not outcome.scores:
        sys.exit(1)


def _agreement(ms, teacher, iset, out: Path, max_tokens: int, judge_model, prog):
    """Each model's greedy answers (stored per model), their agreement with the teacher's, and the
    judge's A-D grade of each answer (stored per model and judge)."""
    from lamini_serve.eval import agreement as A

    key = {"instructions": iset.name, "max_tokens": max_tokens, "prompt": "model", "decoding": "greedy"}
    answers: dict[str, list[str]] = {}
    for m in [teacher] + [m for m in ms if m is not teacher]:
        mkey = {**key, **m.identity()}
        texts = A.cached(out, "answers", m.name, mkey)
        if texts is None:
            try:
                responder = A.load_responder(m)
                try:
                    texts = responder.answer(list(iset.prompts), max_tokens)
                finally:
                    responder.close()
            except LaminiError as exc:
                if m is teacher:
                    raise LaminiError(f"the teacher {m.name} gave no answers, so nothing can be compared: {exc}")
                _err(f"lamini eval: {m.name} gave no answers: {exc}")
                prog.advance(ok=False, n=2 if judge_model else 1)
                continue
            A.store(out, "answers", m.name, mkey, texts)
        answers[m.name] = texts
        prog.advance()
    ag = {"teacher": teacher.name, "instructions": iset.name, "n": len(iset.prompts), "max_tokens": max_tokens,
          "models": {n: A.agreement(t, answers[teacher.name]) for n, t in answers.items() if n != teacher.name}}
    if judge_model is None:
        return ag, None
    jd: dict[str, Any] = {"judge": judge_model.name, "models": {}}
    responder = None
    try:
        for name, texts in answers.items():
            jkey = {**key, "judge": judge_model.name, **{f"judge_{k}": v for k, v in judge_model.identity().items()},
                    "answers": A.digest(texts)}
            replies = A.cached(out, "judge", name, jkey)
            if replies is None:
                responder = responder or A.load_responder(judge_model)
                _, replies = A.judge(responder, iset.prompts, texts)
                A.store(out, "judge", name, jkey, replies)
            jd["models"][name] = A.grade_counts([A.parse_grade(r) for r in replies])
            prog.advance()
    finally:
        if responder is not None:
            responder.close()
    return ag, jd


def _judge_model(arg: str, ms, teacher, api_key):
    from lamini_serve.eval.runner import EvalModel
    from lamini_serve.serve.registry import is_url

    by_name = {m.name: m for m in ms}
    if arg in by_name:
        return by_name[arg]
    if arg == "teacher" and teacher is not None:  # the default: whichever model is the teacher (--teacher NAME)
        return teacher
    if is_url(arg):
        base_url, _, served = arg.partition("#")
        if not served:
            raise LaminiError(f"--judge {arg}: name the model this server gives: {arg}#MODEL")
        return EvalModel(f"{served}@{base_url}", base_url, "endpoint", "judge", None, served, extra={"api_key": api_key})
    raise LaminiError(f"--judge {arg}: not a scored model ({', '.join(by_name)}) nor an endpoint "
                      "(http://HOST:PORT/v1#MODEL); or use --judge none")


@eval.command("tasks")
def list_tasks():
    """The task groups and the shipped offline tasks."""
    from lamini_serve.eval.tasks import LOCAL_METRICS, PAPER_TASKS, local_config

    click.echo("paper  the LaMini-LM paper's 15 zero-shot tasks (datasets from the Hugging Face hub):")
    for name, (metric, label) in PAPER_TASKS.items():
        click.echo(f"  {name:<16} {label:<12} {metric}")
    click.echo("local  shipped with lamini-serve, offline:")
    for name, metric in LOCAL_METRICS.items():
        cfg = local_config(name)
        click.echo(f"  {name:<16} {cfg['output_type']:<16} {metric}")
    click.echo("Any other lm-evaluation-harness task name works too (with the hub).")


@eval.command("report")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/eval"))
def report_cmd(out):
    """Print OUT/report.md again (the report `lamini eval` wrote)."""
    path = out / "report.md"
    if not path.is_file():
        raise LaminiError(f"no report in {out}; run lamini eval --out {out} first")
    click.echo(path.read_text(encoding="utf-8"))
