"""Herd recipes: YAML validated on load, with errors that name the key and the fix.

    dataset: runs/data/dataset.parquet     # or a hub dataset id
    output: runs/herd
    teacher: embedded                      # for students built from it and for word-level KD
    defaults: {epochs: 5, effective_batch_size: 1024, ...}
    students:
      - name: flan-t5-small
        base: google/flan-t5-small
      - name: smol-6l
        init: {from_teacher: true, layers: 6}
        learning_rate: 1.0e-4

Defaults follow the LaMini-LM paper: 5 epochs, effective batch 1024 (reached by
gradient accumulation whatever the device count), AdamW, 5e-4 for encoder-decoder
and 2e-5 for decoder-only students, linear decay with 3% warmup, max length 512,
seed 42.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamini_serve.errors import LaminiError


@dataclass
class TrainArgs:
    """Hyperparameters; any of them may be overridden per student."""

    epochs: float = 5
    effective_batch_size: int = 1024  # per optimizer step, across devices and accumulation
    per_device_batch_size: int = 8
    learning_rate: float | None = None  # None: 5e-4 for seq2seq, 2e-5 for causal students
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_length: int = 512
    seed: int = 42
    packing: bool = True  # decoder-only: several examples per row, attention kept within each
    answer_only_logits: bool = True  # decoder-only: lm_head and loss on the answer positions only (same loss)
    gradient_checkpointing: bool = False
    bf16: str = "auto"  # auto | true | false
    save_steps: int = 200
    logging_steps: int = 10
    max_steps: int = -1  # > 0 caps the run (smoke tests, quick looks)
    eval_share: float = 0.02  # held out from the dataset for the before/after comparison
    cut_answers: str = "keep"  # answers the teacher stopped at its token limit: keep (trained without EOS) | drop

    def __post_init__(self) -> None:
        # dataclasses.replace() calls __init__, so an override (`--max-steps`, a student's own
        # value) is validated as the recipe's defaults are.
        _raise_problem(self.problem())

    def check(self, where: str) -> None:
        _raise_problem(self.problem(), where)

    def problem(self) -> str | None:
        """What is wrong with these arguments (None if nothing)."""
        if self.epochs <= 0:
            return f"epochs must be > 0, got {self.epochs}"
        if self.effective_batch_size < 1 or self.per_device_batch_size < 1:
            return "effective_batch_size and per_device_batch_size must be >= 1"
        if self.per_device_batch_size > self.effective_batch_size:
            return (f"per_device_batch_size ({self.per_device_batch_size}) is larger than effective_batch_size "
                    f"({self.effective_batch_size})")
        if self.learning_rate is not None and not 0 < self.learning_rate < 1:
            return f"learning_rate must be in (0, 1), got {self.learning_rate}"
        if self.weight_decay < 0:
            return f"weight_decay must be >= 0, got {self.weight_decay}"
        if not 0 <= self.warmup_ratio < 1:
            return f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"
        if self.max_length < 16:
            return f"max_length must be >= 16, got {self.max_length}"
        if self.bf16 not in ("auto", "true", "false"):
            return f"bf16 must be auto, true or false, got {self.bf16!r}"
        if self.save_steps < 1 or self.logging_steps < 1:
            return f"save_steps and logging_steps must be >= 1, got {self.save_steps} and {self.logging_steps}"
        # The Trainer reads 0 (or any value <= 0) as "no cap" and would quietly run every epoch.
        if self.max_steps != -1 and self.max_steps < 1:
            return f"max_steps must be >= 1 (or -1 for no cap), got {self.max_steps}"
        if self.cut_answers not in ("keep", "drop"):
            return f"cut_answers must be keep or drop, got {self.cut_answers!r}"
        if not 0 <= self.eval_share < 0.5:
            return f"eval_share must be in [0, 0.5), got {self.eval_share}"
        return None


def _raise_problem(problem: str | None, where: str = "") -> None:
    if problem:
        raise LaminiError(f"{where}: {problem}" if where else problem)


@dataclass
class InitSpec:
    """How a student's weights start: its base checkpoint, or layers kept from the teacher."""

    from_teacher: bool = False
    layers: int | None = None  # with from_teacher: how many of the teacher's layers
    keep: Any = "ends"  # which: ends (first and last halves), spread (evenly), first, or a list of indices
    from_config: dict[str, Any] | None = None  # a fresh model of this config (e.g. a small T5) trained from scratch

    def __post_init__(self) -> None:
        _raise_problem(self.problem())

    def check(self, where: str) -> None:
        _raise_problem(self.problem(), where)

    def problem(self) -> str | None:
        if self.from_teacher and (self.layers is None or self.layers < 1):
            return "init.from_teacher needs init.layers >= 1 (how many teacher layers to keep)"
        if self.layers is not None and not self.from_teacher:
            return "init.layers only applies with init.from_teacher: true"
        if self.from_teacher and self.from_config:
            return "choose one of init.from_teacher and init.from_config"
        if isinstance(self.keep, list):
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in self.keep):
                return f"init.keep lists layer indices (integers), got {self.keep}"
            if self.layers is not None and len(self.keep) != self.layers:
                return f"init.keep lists {len(self.keep)} layers but init.layers is {self.layers}"
        elif self.keep not in ("ends", "spread", "first"):
            return f"init.keep must be ends, spread, first or a list of layer indices, got {self.keep!r}"
        return None


@dataclass
class KDSpec:
    """Word-level distillation against the teacher's logits (beyond the paper)."""

    weight: float = 0.5  # loss = (1 - weight) * cross-entropy + weight * divergence
    divergence: str = "forward_kl"  # forward_kl | reverse_kl | jsd
    temperature: float = 1.0
    beta: float = 0.5  # the mixture weight of generalized JSD
    top_k: int | None = None  # K > 0: the teacher's top-K targets computed once (forward_kl); 0: the live teacher
                              # beside the student; None: 64 for forward_kl, live for the others
    hidden: float = 0.0  # > 0 (students cut from the teacher, cached targets): + hidden * H, where H is how far the
                         # hidden state entering each student block that follows a gap in its kept teacher blocks
                         # is from the one entering that block in the teacher (train.kd.hidden_distance), over all tokens

    @property
    def cached_k(self) -> int:
        """How many teacher tokens per position are cached (0: the teacher runs live)."""
        if self.top_k is None:
            return 64 if self.divergence == "forward_kl" else 0
        return self.top_k

    def __post_init__(self) -> None:
        _raise_problem(self.problem())

    def check(self, where: str) -> None:
        _raise_problem(self.problem(), where)

    def problem(self) -> str | None:
        if not 0 <= self.weight <= 1:
            return f"kd.weight must be in [0, 1], got {self.weight}"
        if self.divergence not in ("forward_kl", "reverse_kl", "jsd"):
            return f"kd.divergence must be forward_kl, reverse_kl or jsd, got {self.divergence!r}"
        if self.temperature <= 0:
            return "kd.temperature must be > 0"
        if not 0 < self.beta < 1:
            return "kd.beta must be in (0, 1)"
        if self.top_k is not None and self.top_k < 0:
            return f"kd.top_k must be >= 0 (0: the live teacher), got {self.top_k}"
        if self.top_k and self.divergence != "forward_kl":
            return (f"kd.top_k {self.top_k} caches the teacher's top tokens for forward_kl only; "
                    f"{self.divergence} needs the whole distribution: set kd.top_k: 0")
        if not self.hidden >= 0:  # also refuses NaN
            return f"kd.hidden must be >= 0, got {self.hidden}"
        if self.hidden and not self.cached_k:
            return ("kd.hidden needs the teacher's cached targets (forward_kl with kd.top_k > 0), "
                    "not the live teacher of kd.top_k: 0")
        return None


HIDDEN_NEEDS_CUT = ("kd.hidden matches hidden states where the teacher's blocks kept by the student skip some; "
                    "it needs init.from_teacher (a base or init.from_config student has no such blocks): set kd.hidden: 0")


@dataclass
class Student:
    name: str
    base: str | None = None  # a hub id or a checkpoint folder
    init: InitSpec = field(default_factory=InitSpec)
    prompt_format: str | None = None  # default: raw for seq2seq, alpaca for causal (chat when built from a chat teacher)
    kd: KDSpec | None = None
    args: TrainArgs = field(default_factory=TrainArgs)


@dataclass
class Recipe:
    dataset: str
    output: str
    students: list[Student]
    teacher: str = "embedded"
    defaults: TrainArgs = field(default_factory=TrainArgs)
    source: str = ""  # the file it came from

    def student(self, name: str) -> Student:
        for s in self.students:
            if s.name == name:
                return s
        raise LaminiError(f"no student named {name!r} in {self.source or 'the recipe'}; "
                          f"it has: {', '.join(s.name for s in self.students)}")


_ARG_FIELDS = {f.name: f for f in dataclasses.fields(TrainArgs)}


def _typed(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently coerce) one YAML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _typed(value, a, where)
            except LaminiError:
                continue
        raise LaminiError(f"{where}: expected {' or '.join(getattr(a, '__name__', str(a)) for a in args)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise LaminiError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise LaminiError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 5e-4 (no dot) as a string
            except ValueError:
                pass
        raise LaminiError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, bool):
            return "true" if value else "false"  # bf16: true
        if isinstance(value, str):
            return value
        raise LaminiError(f"{where}: expected text, got {value!r}")
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
        raise LaminiError(f"{where}: expected a mapping, got {value!r}")
    return value


def _build(cls, data: Any, where: str, context: str | None = None):
    """A validated `cls` from a YAML mapping; a type error names `where.key`, a bad value `context`."""
    if not isinstance(data, dict):
        raise LaminiError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise LaminiError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(names))}")
    values = {k: _typed(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return _validated(context or where, cls, **values)


def _validated(where: str, make, *args, **kwargs):
    """`make(*args, **kwargs)`, with the recipe location put before a validation error."""
    try:
        return make(*args, **kwargs)
    except LaminiError as exc:
        raise LaminiError(f"{where}: {exc}") from None


def parse_recipe(data: Any, source: str = "<recipe>") -> Recipe:
    if not isinstance(data, dict):
        raise LaminiError(f"{source}: a recipe is a mapping with dataset, output and students")
    top = {"dataset", "output", "students", "teacher", "defaults"}
    unknown = set(data) - top
    if unknown:
        raise LaminiError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(top))}")
    for key in ("dataset", "output", "students"):
        if key not in data:
            raise LaminiError(f"{source}: missing {key!r}")
    defaults = _build(TrainArgs, data.get("defaults") or {}, f"{source}: defaults")
    if not isinstance(data["students"], list) or not data["students"]:
        raise LaminiError(f"{source}: students must be a non-empty list")
    students, seen = [], set()
    for i, raw in enumerate(data["students"]):
        where = f"{source}: students[{i}]"
        if not isinstance(raw, dict):
            raise LaminiError(f"{where}: expected a mapping with name and base")
        allowed = {"name", "base", "init", "prompt_format", "kd"} | set(_ARG_FIELDS)
        unknown = set(raw) - allowed
        if unknown:
            raise LaminiError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise LaminiError(f"{where}: needs a name (text without '/'), got {name!r}")
        if name in seen:
            raise LaminiError(f"{where}: the name {name!r} is used twice")
        seen.add(name)
        where = f"{source}: student {name}"
        init = _build(InitSpec, raw.get("init") or {}, f"{where}: init", context=where)
        base = raw.get("base")
        if base is not None and not isinstance(base, str):
            raise LaminiError(f"{where}: base must be a hub id or a folder, got {base!r}")
        if (base is None) == (not init.from_teacher and not init.from_config):
            if base is None:
                raise LaminiError(f"{where}: needs a base (hub id or folder), or init.from_teacher / init.from_config")
            raise LaminiError(f"{where}: give either a base or an init that builds the model, not both")
        kd = _build(KDSpec, raw["kd"], f"{where}: kd", context=where) if raw.get("kd") is not None else None
        if kd is not None and kd.hidden and not init.from_teacher:
            raise LaminiError(f"{where}: {HIDDEN_NEEDS_CUT}")
        fmt = raw.get("prompt_format")
        if fmt is not None and fmt not in ("raw", "alpaca", "chat"):
            raise LaminiError(f"{where}: prompt_format must be raw, alpaca or chat, got {fmt!r}")
        overrides = {k: _typed(v, typing.get_type_hints(TrainArgs)[k], f"{where}.{k}") for k, v in raw.items() if k in _ARG_FIELDS}
        args = _validated(where, dataclasses.replace, defaults, **overrides)
        students.append(Student(name=name, base=base, init=init, prompt_format=fmt, kd=kd, args=args))
    for key in ("dataset", "output", "teacher"):
        if key in data and not isinstance(data[key], str):
            raise LaminiError(f"{source}: {key} must be text, got {data[key]!r}")
    return Recipe(dataset=data["dataset"], output=data["output"], students=students,
                  teacher=data.get("teacher", "embedded"), defaults=defaults, source=source)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (a shipped name such as `quickstart-cpu` works too)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        shipped = shipped_recipes().get(str(path).removesuffix(".yaml"))
        if shipped is None:
            raise LaminiError(f"{path}: no such recipe file; shipped recipes: {', '.join(sorted(shipped_recipes()))}")
        p = shipped
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise LaminiError(f"{p} is not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    return parse_recipe(data, str(p))


def shipped_recipes() -> dict[str, Path]:
    from importlib import resources

    folder = resources.files("lamini_serve").joinpath("recipes")
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".yaml")}
