"""Which tasks `lamini eval` runs, and which of each task's numbers it reports.

- `paper`: the LaMini-LM paper's 15 zero-shot tasks (Wu et al., 2023, section 5), by their
  lm-evaluation-harness 0.4 names, each with the metric the paper reported: acc_norm for
  OpenBookQA, SciQ, ARC-C, PIQA and HellaSwag, F1 for ReCoRD, acc for the rest. Their
  datasets come from the Hugging Face hub.
- `local`: five small tasks written for lamini-serve that ship in the package
  (`resources/tasks/*.yaml` + `*.jsonl`, lm-eval's custom-task format), so evaluation runs
  with no network: multiple choice, sentiment, entailment, a log-likelihood cloze and a short
  generation task.
- any other lm-eval task name, for users with the hub.

`resolve("paper,local_mc")` turns what the user typed into `TaskRef`s; an unknown name is a
one-line error with the close matches.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lamini_serve.errors import LaminiError

# lm-eval 0.4 name -> (the paper's metric, what the paper called it)
PAPER_TASKS: dict[str, tuple[str, str]] = {
    "openbookqa": ("acc_norm", "OpenBookQA"),
    "sciq": ("acc_norm", "SciQ"),
    "race": ("acc", "RACE"),
    "arc_challenge": ("acc_norm", "ARC-C"),
    "piqa": ("acc_norm", "PIQA"),
    "record": ("f1", "ReCoRD"),
    "sst2": ("acc", "SST"),
    "mrpc": ("acc", "MRPC"),
    "rte": ("acc", "RTE"),
    "mnli": ("acc", "MNLI"),
    "mnli_mismatch": ("acc", "MNLI (mis)"),
    "wsc273": ("acc", "WSC"),
    "winogrande": ("acc", "WinoGrande"),
    "wic": ("acc", "WiC"),
    "hellaswag": ("acc_norm", "HellaSwag"),
}
# the metric each local task is reported by (the YAMLs compute a few more)
LOCAL_METRICS = {
    "local_mc": "acc_norm",
    "local_sentiment": "acc",
    "local_entail": "acc",
    "local_cloze": "acc",
    "local_qa": "contains",
}
# tasks scored on the raw text whatever the model's prompt format: a cloze asks whether a model
# continues text, which an instruction wrapper turns into a different question
RAW_TEXT = {"local_cloze"}
GROUPS = {"paper": list(PAPER_TASKS), "local": list(LOCAL_METRICS)}
# output types that need the model's log-probabilities (all but generation); None: not known before it runs
LOGLIKELIHOOD_TYPES = {"multiple_choice", "loglikelihood", "loglikelihood_rolling", None}


@dataclass(frozen=True)
class TaskRef:
    name: str
    metric: str  # the number reported for it (higher is better)
    label: str  # how tables name it
    config: Any = field(default=None, compare=False)  # an inline config dict (local tasks) or None (by name)
    output_type: str | None = None  # known for local tasks; read from lm-eval for the others
    raw_text: bool = False  # scored without the model's prompt format
    digest: str = ""  # of a local task's files: a stored score of an edited task is not reused

    @property
    def source(self) -> Any:
        """What lm-eval's `simple_evaluate(tasks=[...])` takes for this task."""
        return self.config if self.config is not None else self.name

    @property
    def is_local(self) -> bool:
        return self.config is not None


def tasks_dir() -> Path:
    return Path(str(resources.files("lamini_serve.eval") / "resources" / "tasks"))


def _yaml_loader(folder: Path):
    """A YAML loader that reads lm-eval's `!function module.name` as that function of `folder/module.py`."""
    import importlib.util

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def function(loader, node):
        module, _, fn = loader.construct_scalar(node).rpartition(".")
        spec = importlib.util.spec_from_file_location(f"lamini_serve.eval._tasks_{module}", folder / f"{module}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return getattr(mod, fn)

    Loader.add_constructor("!function", function)
    return Loader


def local_config(name: str) -> dict[str, Any]:
    """A shipped task's YAML as an inline config, its data files made absolute."""
    import yaml

    folder = tasks_dir()
    cfg = yaml.load((folder / f"{name}.yaml").read_text(encoding="utf-8"), Loader=_yaml_loader(folder))  # noqa: S506
    files = cfg["dataset_kwargs"]["data_files"]
    cfg["dataset_kwargs"]["data_files"] = {split: str(folder / f) for split, f in files.items()}
    cfg.pop("tag", None)
    return cfg


def local_task(name: str) -> TaskRef:
    import hashlib

    cfg = local_config(name)
    folder = tasks_dir()
    h = hashlib.sha256((folder / f"{name}.yaml").read_bytes())
    for f in sorted(set(cfg["dataset_kwargs"]["data_files"].values())):
        h.update(Path(f).read_bytes())
    if (folder / "utils.py").is_file():
        h.update((folder / "utils.py").read_bytes())
    return TaskRef(name, LOCAL_METRICS[name], name, cfg, cfg["output_type"], name in RAW_TEXT, h.hexdigest()[:16])


def resolve(spec: str, known: "list[str] | None" = None) -> list[TaskRef]:
    """`paper`, `local`, task names, or a comma-separated mix, in order, without repeats.

    `known` is lm-eval's list of task names; it is read (a few seconds) only when a name is
    neither a group, a paper task nor a local task."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        for n in GROUPS.get(part, [part]):
            if n not in names:
                names.append(n)
    if not names:
        raise LaminiError("no task given; use --tasks local (offline), --tasks paper (the paper's 15, from the hub) "
                          "or lm-eval task names separated by commas")
    refs = []
    for n in names:
        if n in LOCAL_METRICS:
            refs.append(local_task(n))
        elif n in PAPER_TASKS:
            metric, label = PAPER_TASKS[n]
            refs.append(TaskRef(n, metric, label, output_type="multiple_choice"))  # all 15 are scored by log-likelihood
        else:
            known = known if known is not None else lm_eval_task_names()
            if n not in known:
                close = difflib.get_close_matches(n, [*GROUPS, *LOCAL_METRICS, *known], n=5, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise LaminiError(f"unknown task {n!r}{hint} (`lamini eval tasks` lists the groups and local tasks; "
                                  "any lm-eval task name works too)")
            refs.append(TaskRef(n, "", n))  # reported by its first metric; its output type is read when it runs
    return refs


def lm_eval_task_names() -> list[str]:
    from lm_eval.tasks import TaskManager

    return list(TaskManager().all_tasks)
