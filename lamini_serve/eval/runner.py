"""Run lm-evaluation-harness tasks over many models, one (model, task) at a time, resumable.

Each finished pair is written to `OUT/scores/<model>/<task>.json` (atomically) with the number
reported, every metric lm-eval computed, the task's version, the number of documents, the
lm-eval version and the model's hash; a rerun with the same settings skips it. A task that
fails (its dataset cannot be fetched, the model cannot give log-likelihoods) is reported
and the others go on; it is not written, so a rerun tries it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from lamini_serve.errors import LaminiError
from lamini_serve.eval.lms import NoLoglikelihood
from lamini_serve.eval.tasks import LOGLIKELIHOOD_TYPES, TaskRef
from lamini_serve.paths import atomic_write_text

SCORE_FORMAT = 1


@dataclass
class EvalModel:
    """One model to score, whatever runs it."""

    name: str
    source: str  # a folder, a hub id, `embedded`, or an endpoint URL
    kind: str  # "torch" (lm-eval's HFLM), "onnx" (an export on the in-process engine), "endpoint"
    role: str = "student"  # teacher | student | export | base
    spec: Any = None  # ModelSpec (for an endpoint: of the local folder that gives its tokenizer)
    served: str | None = None  # an endpoint's model name
    of: str | None = None  # export: the student it was exported from; base: the student it is the base of
    prompted: bool = True  # the task's context goes in the model's prompt format
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.spec.prompt_format.value if (self.prompted and self.spec is not None) else "raw"

    def hash(self) -> str | None:
        """sha256 over the weight files (an endpoint: its local folder's), None for a hub id not
        downloaded; computed once."""
        if "hash" not in self.extra:
            self.extra["hash"] = None
            if self.spec is not None and self.spec.is_local:
                from lamini_serve.export.exporter import checkpoint_sha256

                self.extra["hash"] = checkpoint_sha256(Path(self.spec.path),
                                                       (".safetensors", ".bin", ".onnx", ".onnx_data", ".data"))
        return self.extra["hash"]

    def identity(self) -> dict[str, Any]:
        """What a stored result of this model must match to be reused (a retrained or replaced model
        under the same name is scored again)."""
        return {"source": self.source, "served": self.served, "hash": self.hash() or self.source}


@dataclass
class Settings:
    limit: int | None = None
    batch_size: int | str = 8
    device: str = "auto"
    api_key: str | None = None

    def key(self, model: EvalModel, task: TaskRef) -> dict[str, Any]:
        """What a stored score must match to be reused."""
        return {"limit": self.limit, "prompt": "raw" if task.raw_text else model.prompt, "kind": model.kind,
                "task": task.digest or task.name, **model.identity()}


def score_path(out: Path, model: str, task: str) -> Path:
    return out / "scores" / model / f"{task}.json"


def load_score(out: Path, model: EvalModel, task: TaskRef, settings: Settings) -> dict | None:
    path = score_path(out, model.name, task.name)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if rec.get("format") != SCORE_FORMAT or rec.get("settings") != settings.key(model, task):
        return None
    return rec


@contextlib.contextmanager
def quiet_lm_eval():
    """lm-eval's own progress bars and logs, silenced: `lamini eval` shows one display."""
    import datasets
    import tqdm.std

    bars = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    tqdm_init = tqdm.std.tqdm.__init__

    def silent_init(self, *args, **kwargs):
        kwargs["disable"] = True
        tqdm_init(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = silent_init
    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        import lm_eval.evaluator as ev

        saved = ev.get_git_commit_hash
        ev.get_git_commit_hash = lambda: None  # it shells out to git in the working directory
    except (ImportError, AttributeError):
        ev, saved = None, None
    try:
        yield
    finally:
        if ev is not None:
            ev.get_git_commit_hash = saved
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
        tqdm.std.tqdm.__init__ = tqdm_init
        if bars:
            datasets.enable_progress_bars()


def build_lm(model: EvalModel, settings: Settings, loglikelihood: bool = True):
    """(the lm-eval model for `model` wrapped in its prompt format when it has one, the model on raw
    text). An endpoint is first probed for prompt log-probabilities when `loglikelihood` tasks will
    run (NoLoglikelihood)."""
    from lamini_serve.eval import lms

    if model.kind == "torch":
        lm = lms.hf_lm(model.spec, settings.device, settings.batch_size)
    elif model.kind == "onnx":
        from lamini_serve.engines.inprocess import InProcessEngine

        lm = lms.engine_lm(InProcessEngine.load(model.name, model.spec, "onnx"))
    elif model.kind == "endpoint":
        tok = model.spec.load_tokenizer()
        probe_ids = list(tok("The quick brown fox jumps over the lazy dog.", add_special_tokens=False)["input_ids"])
        card = lms.probe_endpoint(model.source, model.served, probe_ids if loglikelihood else [], settings.api_key)
        lm = lms.endpoint_lm(model.source, model.served, model.spec.path, settings.api_key,
                             int(card.get("max_model_len") or 2048), batch_size=1)
    else:
        raise LaminiError(f"{model.name}: unknown kind {model.kind!r}")
    if model.prompted and model.spec is not None and model.spec.prompt_format.value != "raw":
        spec, tok = model.spec, getattr(lm, "tokenizer", None)
        return lms.prompted(lm, lambda context: spec.prompt(context, tok)), lm
    return lm, lm


def needs_loglikelihood(tasks: Sequence[TaskRef]) -> list[TaskRef]:
    return [t for t in tasks if t.output_type in LOGLIKELIHOOD_TYPES]


def check_capable(model: EvalModel, tasks: Sequence[TaskRef]) -> str | None:
    """Why `model` cannot run some of `tasks` (log-likelihoods from a seq2seq export), or None."""
    if model.kind == "onnx" and model.spec.family.value == "seq2seq":
        need = [t.name for t in needs_loglikelihood(tasks)]
        if need:
            return (f"{model.name} is an encoder-decoder ONNX export, which cannot give the log-likelihoods that "
                    f"{', '.join(need)} need; score its source checkpoint for those")
    return None


def run_task(lm, task: TaskRef, settings: Settings, task_manager) -> dict[str, Any]:
    """One task through lm-eval: its results, version, sample counts and configuration."""
    import lm_eval

    return lm_eval.simple_evaluate(model=lm, tasks=[task.source], num_fewshot=0, limit=settings.limit,
                                   task_manager=task_manager, log_samples=True, bootstrap_iters=1000)


def record(model: EvalModel, task: TaskRef, settings: Settings, res: dict[str, Any], model_hash: str | None) -> dict:
    """The stored form of one (model, task) result."""
    from importlib.metadata import version

    name = task.name
    raw = res["results"][name]
    metrics: dict[str, float] = {}
    stderr: dict[str, float] = {}
    for k, v in raw.items():  # "acc,none", "acc_stderr,none": a task with several filters keeps its first
        if "," not in k or not isinstance(v, (int, float)):
            continue
        metric = k.split(",")[0]
        if metric.endswith("_stderr"):
            stderr.setdefault(metric[:-len("_stderr")], v)
        else:
            metrics.setdefault(metric, v)
    metric = task.metric or next(iter(metrics), "")
    if metric not in metrics:
        raise LaminiError(f"{name}: lm-eval reported no {metric} (it gave {', '.join(metrics) or 'nothing'})")
    samples = [{"doc_id": s.get("doc_id"), "target": s.get("target"),
                "resps": s.get("filtered_resps"), metric: s.get(metric)}
               for s in (res.get("samples") or {}).get(name, [])]
    return {
        "format": SCORE_FORMAT,
        "model": model.name, "task": name, "label": task.label, "metric": metric,
        "value": float(metrics[metric]), "stderr": stderr.get(metric),
        "metrics": metrics,
        "n": (res.get("n-samples") or {}).get(name, {}).get("effective"),
        "task_version": (res.get("versions") or {}).get(name),
        "lm_eval_version": res.get("lm_eval_version") or version("lm_eval"),
        "model_hash": model_hash, "model_source": model.source, "model_kind": model.kind, "role": model.role,
        "settings": settings.key(model, task),
        "samples": samples,
    }


@dataclass
class Outcome:
    scores: list[dict] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (model, task, why)
    reused: int = 0


def evaluate(models: Sequence[EvalModel], tasks: Sequence[TaskRef], out: Path, settings: Settings,
             progress=None, log: Callable[[str], None] = print) -> Outcome:
    """Every task on every model, skipping pairs already scored with these settings."""
    with quiet_lm_eval():
        return _evaluate(models, tasks, out, settings, progress, log)


def _evaluate(models, tasks, out, settings, progress, log) -> Outcome:
    from lm_eval.tasks import TaskManager

    result = Outcome()
    tm: Any = None
    for model in models:
        todo = []
        for task in tasks:
            rec = load_score(out, model, task, settings)
            if rec is not None:
                result.scores.append(rec)
                result.reused += 1
                if progress:
                    progress.advance()
            else:
                todo.append(task)
        if not todo:
            continue
        def drop_loglikelihood(problem: str) -> list[TaskRef]:
            bad = needs_loglikelihood(todo)
            for t in bad:
                result.failures.append((model.name, t.name, problem))
                if progress:
                    progress.advance(ok=False)
            log(f"lamini eval: {problem}")
            return [t for t in todo if t not in bad]

        problem = check_capable(model, todo)
        if problem:
            todo = drop_loglikelihood(problem)
            if not todo:
                continue
        try:
            try:
                built = build_lm(model, settings, loglikelihood=bool(needs_loglikelihood(todo)))
            except NoLoglikelihood as exc:
                names = ", ".join(t.name for t in needs_loglikelihood(todo))
                todo = drop_loglikelihood(f"{exc}, which {names} need; its generation tasks still run")
                if not todo:
                    continue
                built = build_lm(model, settings, loglikelihood=False)
        except Exception as exc:  # noqa: BLE001  a model that will not load must not stop the others
            why = str(exc) if isinstance(exc, LaminiError) else f"it did not load ({type(exc).__name__}: {exc})"
            why = why.strip().splitlines()[0][:400] if why.strip() else type(exc).__name__
            for t in todo:
                result.failures.append((model.name, t.name, why))
                if progress:
                    progress.advance(ok=False)
            log(f"lamini eval: {model.name}: {why}")
            continue
        model_hash = model.hash()
        for task in todo:
            if tm is None:
                tm = TaskManager(include_defaults=any(not t.is_local for t in tasks))
            try:
                res = run_task(built[1] if task.raw_text else built[0], task, settings, tm)
                rec = record(model, task, settings, res, model_hash)
            except Exception as exc:  # noqa: BLE001  one task's failure (no dataset, no hub) must not stop the rest
                why = _why(task, exc)
                result.failures.append((model.name, task.name, why))
                log(f"lamini eval: {model.name} / {task.name}: {why}; going on with the others")
                if progress:
                    progress.advance(ok=False)
                continue
            atomic_write_text(score_path(out, model.name, task.name), json.dumps(rec, indent=1) + "\n")
            result.scores.append(rec)
            if progress:
                progress.advance()
        engine = getattr(built[1], "engine", None)
        if engine is not None:
            engine.close()  # its scheduler thread would keep the session (and its memory) alive
        del built
    return result


def _why(task: TaskRef, exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, LaminiError):
        return text
    low = text.lower()
    if any(w in low for w in ("offline", "connection", "couldn't reach", "not find", "doesn't exist", "hub",
                              "dataset", "resolve", "404")):
        return (f"its dataset could not be fetched ({type(exc).__name__}: {text[:200]}); it needs the Hugging Face "
                "hub (or a datasets cache that holds it)")
    return f"{type(exc).__name__}: {text[:300]}"
