"""Which models `lamini serve` serves, on which engine, and loading them.

Models come from the command line:

- `NAME=PATH`: PATH (a checkpoint folder, an export folder, `embedded` or a hub id)
  served as NAME;
- a bare `PATH`: named after its folder (`runs/herd/t5-small` -> `t5-small`, a hub id
  `org/model` -> `model`); `embedded` (or `teacher`) -> `teacher`;
- `NAME=http://HOST:PORT/v1[#MODEL]`: a model on another OpenAI-compatible server
  (a vLLM container, another `lamini serve`), relayed (key: $LAMINI_UPSTREAM_API_KEY);
- `--herd DIR` (or `--herd RECIPE`, for the folder that recipe trains): `teacher` (the embedded teacher, unless herd.json records another
  one under "teacher"), every student in DIR/herd.json (rebuilt from the folders
  when herd.json is missing) under its name, and every ONNX export of them that
  `lamini export --herd` wrote (`DIR-onnx/<student>`, beside DIR) as `<student>-int8`.

Each model's engine is `engines.setup.choose()`'s pick (an export runs on onnx;
decoder-only models on vLLM when a vLLM environment exists; the rest on torch),
unless `--engine NAME=KIND` says otherwise.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from lamini_serve.errors import LaminiError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$")
KINDS = ("vllm", "onnx", "torch")
EMBEDDED = ("embedded", "teacher", "embedded-teacher")


class UsageProblem(LaminiError):
    """Bad command-line input: exit status 2."""

    exit_code = 2


@dataclass
class Planned:
    name: str
    source: str  # what the user gave: a path, `embedded`, a hub id
    origin: str  # where it came from: "command line", "herd DIR"...
    spec: Any = None
    kind: str = ""
    why: str = ""
    role: str = "student"


def parse_model_arg(arg: str) -> tuple[str, str]:
    """(name, path) from `NAME=PATH` or a bare PATH."""
    if "=" in arg:
        name, _, path = arg.partition("=")
        if NAME_RE.match(name) and path:
            return name, path
        if "/" not in name and not name.startswith((".", "~")):
            raise UsageProblem(f"{arg!r}: expected NAME=PATH with NAME made of letters, digits and ._:@+- "
                               "(e.g. t5=runs/herd/t5-small)")
    path = arg
    if is_url(path):
        model = path.partition("#")[2]
        if not NAME_RE.match(model):
            raise UsageProblem(f"{arg!r}: name the model this server gives: NAME={arg}")
        return model, path
    if path in EMBEDDED:
        return "teacher", path
    name = Path(path.rstrip("/")).name or path
    if not NAME_RE.match(name):
        raise UsageProblem(f"cannot name a model after {arg!r}; give it one: NAME={arg}")
    return name, path


def is_url(source: str) -> bool:
    """A model on another OpenAI-compatible server (`http://HOST:PORT/v1[#MODEL]`)."""
    return source.startswith(("http://", "https://"))


def parse_pairs(values: Sequence[str], option: str, what: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            raise UsageProblem(f"{option} {v!r}: expected NAME={what}")
        out.append((name, rest))
    return out


def plan(models: Sequence[str], herd: str | Path | None = None, engines: Sequence[str] = (),
         teacher: str | None = None, log: Callable[[str], None] = print) -> list[Planned]:
    """What to serve: every model named, resolved, with its engine chosen (nothing loaded yet)."""
    planned: list[Planned] = []
    for arg in models:
        name, path = parse_model_arg(arg)
        planned.append(Planned(name, path, "command line"))
    if herd is not None:
        planned += _herd(Path(herd))
    if not planned:
        raise UsageProblem("no models to serve; name some (lamini serve embedded runs/herd/t5-small) "
                           "or a herd (lamini serve --herd runs/herd)")
    seen: dict[str, Planned] = {}
    for p in planned:
        if p.name in seen:
            raise UsageProblem(f"two models are named {p.name!r} ({seen[p.name].source} and {p.source}); "
                               f"name one of them: NAME={p.source}")
        seen[p.name] = p
    if teacher is not None and teacher not in seen:
        raise UsageProblem(f"--teacher {teacher}: no model of that name is served (served: {', '.join(seen)})")

    overrides = dict(parse_pairs(engines, "--engine", "vllm|onnx|torch"))
    for name, kind in overrides.items():
        if name not in seen:
            raise UsageProblem(f"--engine {name}={kind}: no model of that name is served (served: {', '.join(seen)})")
        if kind not in KINDS:
            raise UsageProblem(f"--engine {name}={kind}: unknown engine; use vllm, onnx or torch")

    from lamini_serve.teacher.embedded import resolve_model

    for p in planned:
        if is_url(p.source):
            if p.name in overrides:
                raise UsageProblem(f"--engine {p.name}={overrides[p.name]}: {p.name} is served by {p.source}; "
                                   "lamini relays to it and cannot choose its engine")
            p.role = "teacher" if p.name == (teacher or "teacher") else "student"
            p.kind, p.why = "remote", "an OpenAI-compatible server lamini relays to"
            continue
        if p.source not in EMBEDDED:
            local = Path(p.source).expanduser()
            if not local.exists() and (p.source.startswith((".", "/", "~")) or p.source.count("/") > 1):
                raise LaminiError(f"{p.name}: no such folder: {p.source}")
        p.spec = resolve_model(p.source, log=log)
        is_teacher = p.name == teacher if teacher is not None else (p.source in EMBEDDED or p.name == "teacher")
        p.role = "teacher" if is_teacher else "student"
    local = [p for p in planned if p.kind != "remote"]
    vllm_py = _vllm_python() if any(overrides.get(p.name, "vllm") == "vllm" for p in local) else None
    for p in local:
        p.kind, p.why = _engine(p, overrides.get(p.name), vllm_py)
    return planned


def _vllm_python() -> str | None:
    try:
        from lamini_serve.engines.setup import vllm_python
    except ImportError:
        return None
    return vllm_python()


def _choose(spec, vllm_py):
    try:
        from lamini_serve.engines.setup import choose
    except ImportError:
        return ("onnx", "an ONNX export folder (lamini export)") if spec.runtime == "onnx" else ("torch", "in-process")
    return choose(spec, vllm_py)


def _engine(p: Planned, override: str | None, vllm_py: str | None) -> tuple[str, str]:
    from lamini_serve.models import Family

    spec = p.spec
    if override is None:
        return _choose(spec, vllm_py)
    if override == "onnx" and spec.runtime != "onnx":
        raise LaminiError(f"--engine {p.name}=onnx: {p.source} is not an ONNX export; make one with "
                          f"`lamini export {p.source} OUT` and serve OUT")
    if override != "onnx" and spec.runtime == "onnx":
        raise LaminiError(f"--engine {p.name}={override}: {p.source} is an ONNX export, which runs on onnx; "
                          f"serve the checkpoint it was exported from for {override}")
    if override == "vllm":
        if spec.family is Family.SEQ2SEQ:
            raise LaminiError(f"--engine {p.name}=vllm: {p.source} is an encoder-decoder model, which vLLM does not "
                              "serve; use torch (or onnx after `lamini export`)")
        if not vllm_py:
            raise LaminiError(f"--engine {p.name}=vllm: no vLLM environment; make one with `lamini setup vllm`")
    return override, "--engine"


def herd_index_of(herd: Path) -> tuple[Path, dict[str, Any], str | None]:
    """(folder, herd.json's content, the recipe's teacher) of `--herd`: a trained folder or its recipe.
    A herd.json without students is completed from the student folders."""
    from lamini_serve.train.herd import HERD_FILE, herd_index

    root, recipe_teacher = Path(herd), None
    if not root.is_dir():
        recipe = herd_recipe(root)
        root, recipe_teacher = Path(recipe.output), recipe.teacher
        if not root.is_dir():
            raise LaminiError(f"--herd {recipe.source}: its herd {root} is not trained yet; "
                              f"train it first: lamini train {recipe.source}")
    index_file = root / HERD_FILE
    index: dict[str, Any] = {}
    if index_file.is_file():
        try:
            index = json.loads(index_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LaminiError(f"{index_file} is unreadable ({type(exc).__name__}); delete it and it is rebuilt") from None
    if not index.get("students"):
        index = {**index, **herd_index(root)}
    return root, index, recipe_teacher


def _herd(herd: Path) -> list[Planned]:
    from lamini_serve.checkpoint import is_onnx_folder

    root, index, recipe_teacher = herd_index_of(herd)
    students = index.get("students") or []
    if not students:
        raise LaminiError(f"--herd {root}: no trained students there (no herd.json, no student folders); "
                          "train first: lamini train RECIPE")
    origin = f"herd {root}"
    teacher = index.get("teacher") or recipe_teacher or "embedded"
    out = [Planned("teacher", str(teacher), origin)]
    exports = root.with_name(root.name + "-onnx")
    for s in students:
        folder = root / s["path"]
        out.append(Planned(s["name"], str(folder), origin))
        export = exports / s["path"]
        if export.is_dir() and is_onnx_folder(export):
            out.append(Planned(f"{s['name']}-int8", str(export), f"export of {s['name']} ({exports})"))
    return out


def herd_recipe(arg: Path):
    """The recipe `--herd` names when it is not a folder (a YAML file or a shipped name)."""
    from lamini_serve.train.recipe import load_recipe, shipped_recipes

    if arg.suffix in (".yaml", ".yml") or str(arg) in shipped_recipes():
        return load_recipe(arg)
    raise LaminiError(f"--herd {arg}: no such folder or recipe; pass the output folder of `lamini train` "
                      f"(e.g. runs/herd) or its recipe ({', '.join(sorted(shipped_recipes()))} or a YAML file)")


def vllm_args(values: Sequence[str]) -> dict[str, list[str]]:
    """--vllm-arg NAME=ARG (repeatable; ARG split like a shell would) -> {name: [args]}."""
    out: dict[str, list[str]] = {}
    for name, arg in parse_pairs(values, "--vllm-arg", "ARG"):
        out.setdefault(name, []).extend(shlex.split(arg))
    return out


def load(planned: Sequence[Planned], *, threads: int | None, max_batch: int, max_waiting: int,
         vllm_extra: dict[str, list[str]] | None = None, kv_cache_gib: float = 1,
         log: Callable[[str], None] = print) -> dict[str, Any]:
    """{name: engine}: in-process models loaded now (blocking), vLLM engines made (not started)."""
    from lamini_serve.engines.inprocess import InProcessEngine
    from lamini_serve.engines.scheduler import ThreadBudget

    vllm_extra = vllm_extra or {}
    unknown = [n for n in vllm_extra if n not in {p.name for p in planned}]
    if unknown:
        raise UsageProblem(f"--vllm-arg {unknown[0]}=...: no model of that name is served")
    budget = ThreadBudget(threads)
    engines: dict[str, Any] = {}
    try:
        for p in planned:
            if p.kind == "remote":
                from lamini_serve.engines.relay import RemoteEngine

                if p.name in vllm_extra:
                    raise UsageProblem(f"--vllm-arg {p.name}=...: {p.name} is served by {p.source}, not by a vLLM "
                                       "that lamini starts")
                engines[p.name] = RemoteEngine(p.name, p.source)
            elif p.kind == "vllm":
                from lamini_serve.engines.vllm import VllmEngine

                engines[p.name] = VllmEngine(p.name, p.spec, _vllm_python(), extra_args=tuple(vllm_extra.get(p.name, ())),
                                             kv_cache_gib=kv_cache_gib)
            else:
                if p.name in vllm_extra:
                    raise UsageProblem(f"--vllm-arg {p.name}=...: {p.name} runs on {p.kind}, not vllm")
                log(f"loading {p.name} ({p.kind}) ...")
                engines[p.name] = InProcessEngine.load(p.name, p.spec, kind=p.kind, budget=budget,
                                                       max_batch=max_batch, max_waiting=max_waiting)
    except BaseException:
        for engine in engines.values():
            if not getattr(engine, "relayed", False):
                engine.close()
        raise
    return engines
