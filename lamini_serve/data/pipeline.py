"""The data stage end to end: plan, generate, filter, dedup, answer, write, describe.

Every unit of teacher work has a key (a hash of its prompt, teacher and
parameters) and lands in the run's SQLite store as it completes. Running the same
command again skips what is stored, so a crash, a Ctrl-C or a SIGKILL costs only
the units in flight. `--shard i/N` keeps the units whose key falls in shard i;
`lamini data merge` joins the shards' stores and writes one dataset.
"""

from __future__ import annotations

import json
import platform
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lamini_serve.data.dedup import DedupConfig, dedup_reasons
from lamini_serve.data.filters import FilterConfig, instruction_reason, response_reason
from lamini_serve.data.prompts import (
    STYLES,
    Example,
    chat_prompt,
    completion_prompt,
    how_many,
    parse_instructions,
)
from lamini_serve.data.seeds import Seed, load_seeds, load_topics
from lamini_serve.data.store import Store
from lamini_serve.data.text import stable_hash, with_input
from lamini_serve.errors import LaminiError
from lamini_serve.generation import cut_at_limit
from lamini_serve.prompts import LAMINI_TEACHER_SYSTEM
from lamini_serve.teacher.client import Request, Result

DATASET = "dataset.parquet"
REJECTED = "rejected.parquet"
SOURCES = ("seed", "example_guided", "topic_guided")


@dataclass
class DataConfig:
    """Everything that decides what a data run produces (recorded in run.json)."""

    out: str
    seeds: str = "builtin"
    columns: dict[str, str] = field(default_factory=dict)
    topics: str = "builtin"
    calls: int = 70  # example-guided generation calls
    topic_calls: int = 30  # topic-guided generation calls
    style: str = "auto"  # auto (the teacher's own), chat, completion
    gen_temperature: float = 0.9
    gen_top_p: float = 0.95
    gen_max_tokens: int | None = None  # auto: 1024 for chat, 128 for completion (about 4 new tasks)
    answer_seeds: bool = False  # the seeds' own instructions, answered by the teacher, into the dataset
    system_prompt: str = LAMINI_TEACHER_SYSTEM
    resp_temperature: float = 0.0
    resp_max_tokens: int | None = None  # auto: 128 in-process, 512 over HTTP
    resp_repetition_penalty: float | None = None  # auto: 1.1 in-process (small models loop), unset over HTTP
    dedup: DedupConfig = field(default_factory=DedupConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    shard: tuple[int, int] = (0, 1)
    seed: int = 42
    jsonl: bool = False
    stats: bool = True

    def __post_init__(self) -> None:
        if self.calls < 0 or self.topic_calls < 0:
            raise LaminiError("--calls and --topic-calls must be >= 0")
        if self.style not in ("auto", *STYLES):
            raise LaminiError(f"unknown generation style {self.style!r}; use auto, chat or completion")
        i, n = self.shard
        if n < 1 or not 0 <= i < n:
            raise LaminiError(f"--shard {i}/{n}: need 0 <= i < N")
        for name in ("gen_temperature", "resp_temperature"):
            if getattr(self, name) < 0:
                raise LaminiError(f"{name} must be >= 0")


@dataclass
class Planned:
    request: Request
    source: str
    examples: list[Example]


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    return int(key[:15], 16) % shard[1] == shard[0]


def generation_payload(style: str, examples: list[Example], topics: list[str] | None, cfg: DataConfig,
                       call_seed: int) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {"temperature": cfg.gen_temperature, "top_p": cfg.gen_top_p, "seed": call_seed}
    if style == "chat":
        params["max_tokens"] = cfg.gen_max_tokens or 1024
        return "chat", {"messages": [{"role": "user", "content": chat_prompt(examples, topics)}], **params}
    params["max_tokens"] = cfg.gen_max_tokens or 128
    params["stop"] = ["\n\n"]
    return "completion", {"prompt": completion_prompt(examples, topics), **params}


def plan_generation(cfg: DataConfig, seeds: list[Seed], topics: list[str], style: str, teacher_id: str) -> list[Planned]:
    """The generation calls of this run, each decided by (seed, kind, index): the same every rerun."""
    pool = [Example(s.instruction, s.input) for s in seeds]
    if style == "completion":
        # Small teachers copy long inputs into junk; they see examples without inputs.
        plain = [e for e in pool if not e.input]
        pool = plain if len(plain) >= 3 else pool
    if len(pool) < 3:
        raise LaminiError(f"need at least 3 seed instructions to show as examples, have {len(pool)}")
    plan = []
    for source, n in (("example_guided", cfg.calls), ("topic_guided", cfg.topic_calls)):
        for i in range(n):
            rng = random.Random(f"{cfg.seed}:{source}:{i}")
            examples = rng.sample(pool, 3)
            chosen = rng.sample(topics, 3) if source == "topic_guided" else None
            kind, payload = generation_payload(style, examples, chosen, cfg, rng.randrange(2**31))
            key = stable_hash({"stage": "generate", "teacher": teacher_id, "kind": kind, "payload": payload})
            if in_shard(key, cfg.shard):
                plan.append(Planned(Request(key, kind, payload), source, examples))
    return plan


def response_payload(instruction: str, cfg: DataConfig, teacher) -> dict[str, Any]:
    in_process = getattr(teacher, "kind", "") == "in-process"
    messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + [
        {"role": "user", "content": instruction}]
    payload: dict[str, Any] = {
        "messages": messages,
        "temperature": cfg.resp_temperature,
        "max_tokens": cfg.resp_max_tokens or (128 if in_process else 512),
    }
    rep = cfg.resp_repetition_penalty if cfg.resp_repetition_penalty is not None else (1.1 if in_process else None)
    if rep is not None and rep != 1.0:
        payload["repetition_penalty"] = rep
    return payload


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("lamini-serve", "torch", "transformers", "aiohttp", "pyarrow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def write_run_record(run_dir: Path, cfg: DataConfig, teacher_id: str, summary: dict[str, Any] | None = None) -> None:
    from lamini_serve.paths import atomic_write_text

    path = run_dir / "run.json"
    history = []
    if path.is_file():
        try:
            history = json.loads(path.read_text()).get("history", [])
        except ValueError:
            history = []
    record = {"config": _jsonable(asdict(cfg)), "teacher": teacher_id, "versions": versions(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "summary": summary or {}}
    if summary is not None:
        history = (history + [{"time": record["time"], "summary": summary}])[-20:]
    record["history"] = history
    atomic_write_text(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, (tuple, set)) else str(o)))


class Counters(dict):
    def bump(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n


def run_teacher_stage(teacher, todo: list[Request], on_ok, store: Store, stage: str, counters: Counters,
                      label: str, unit: str) -> None:
    """Send `todo` to the teacher; `on_ok(result)` stores each good result, failures are logged."""
    from lamini_serve.progress import Progress

    if not todo:
        return
    with Progress(label, len(todo), unit) as bar:
        def on_result(res: Result) -> None:
            ok = False
            if not res.ok:
                store.add_failure(res.key, stage, res.error or "failed")
                counters.bump(f"{stage}_failed")
            else:
                why = on_ok(res)
                if why:
                    store.add_failure(res.key, stage, why, res.text)
                    counters.bump(f"{stage}_unusable")
                else:
                    ok = True
            bar.retries = getattr(teacher, "retries", 0)
            bar.advance(ok=ok)

        teacher.run(todo, on_result)


def run_data(cfg: DataConfig, teacher, log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """The whole data stage; returns a summary. Safe to rerun: finished work is skipped."""
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    seeds = load_seeds(cfg.seeds, cfg.columns)
    topics = load_topics(cfg.topics) if cfg.topic_calls else []
    style = cfg.style if cfg.style != "auto" else teacher.style
    write_run_record(run_dir, cfg, teacher.id)
    counters = Counters()
    with Store(run_dir / "store.sqlite") as store:
        # 1. The seeds (one pseudo-call holds them): generated rows are deduplicated against
        # them always; they join the dataset only with --answer-seeds.
        seed_texts = [with_input(s.instruction, s.input) for s in seeds]
        seed_key = stable_hash({"stage": "seeds", "seeds": seed_texts})
        if seed_key not in store.keys("calls"):
            store.add_call(seed_key, "seeds", "seed", "", seed_texts)

        # 2. New instructions.
        plan = plan_generation(cfg, seeds, topics, style, teacher.id)
        done = store.keys("calls")
        todo = [p for p in plan if p.request.key not in done]
        log(f"Generation: {len(plan)} calls planned ({style} prompts), {len(plan) - len(todo)} already done")
        by_key = {p.request.key: p for p in todo}

        def store_call(res: Result) -> str | None:
            p = by_key[res.key]
            items = parse_instructions(res.text, style, p.examples, limit=how_many(p.examples))
            if cut_at_limit(res.finish_reason) and items:
                items = items[:-1]  # the last item was cut off by the token limit
            store.add_call(res.key, p.request.kind, p.source, res.text, items, res.prompt_tokens, res.completion_tokens)
            return None if items else "no instructions in the output"

        run_teacher_stage(teacher, [p.request for p in todo], store_call, store, "generate", counters,
                          "generating instructions", "calls")

        # 3. Filters and dedup over the pool (seeds first, so they win over look-alikes).
        wanted_calls = {p.request.key for p in plan} | {seed_key}
        pool = [r for r in store.instructions() if r["call_key"] in wanted_calls]
        pool.sort(key=lambda r: (r["source"] != "seed",))
        reasons = screen(pool, cfg)
        if not cfg.answer_seeds:  # the seeds served as the reference for dedup; they leave now
            kept = [(r, w) for r, w in zip(pool, reasons) if r["source"] != "seed"]
            pool, reasons = [r for r, _ in kept], [w for _, w in kept]

        # 4. Answers.
        keep = [r for r, why in zip(pool, reasons) if why is None]
        answers: dict[str, str] = {}
        requests = []
        for r in keep:
            payload = response_payload(r["instruction"], cfg, teacher)
            key = stable_hash({"stage": "respond", "teacher": teacher.id, "payload": payload})
            answers[r["key"]] = key
            if r["source"] != "seed" or in_shard(key, cfg.shard):
                requests.append(Request(key, "chat", payload))
            else:
                answers.pop(r["key"])
        have = store.keys("responses")
        todo_r = [q for q in requests if q.key not in have]
        log(f"Answers: {len(requests)} instructions to answer, {len(requests) - len(todo_r)} already done")
        instr_of = {q.key: q.payload["messages"][-1]["content"] for q in todo_r}
        resp_params = {k: v for k, v in (requests[0].payload.items() if requests else []) if k != "messages"}

        def store_response(res: Result) -> str | None:
            why = response_reason(res.text, cfg.filters)
            if why:
                return why
            store.add_response(res.key, instr_of[res.key], res.text.strip(), teacher.id, resp_params,
                               res.prompt_tokens, res.completion_tokens, res.finish_reason)
            return None

        run_teacher_stage(teacher, todo_r, store_response, store, "respond", counters, "answering", "answers")

        # 5. The dataset.
        summary = write_dataset(run_dir, store, pool, reasons, answers, cfg, counters)
        summary["style"] = style
    write_run_record(run_dir, cfg, teacher.id, summary)
    if cfg.stats and summary["rows"]:
        from lamini_serve.data.stats import describe

        describe(run_dir / DATASET, run_dir)
    return summary


def screen(pool: list[dict[str, Any]], cfg: DataConfig) -> list[str | None]:
    """A drop reason per instruction (filters, then dedup), or None to keep it."""
    reasons = [instruction_reason(r["instruction"], cfg.filters) if r["source"] != "seed" else None for r in pool]
    dups = dedup_reasons([r["instruction"] for r in pool], cfg.dedup, dropped=[x is not None for x in reasons])
    return [a or b for a, b in zip(reasons, dups)]


def write_dataset(run_dir: Path, store: Store, pool: list[dict[str, Any]], reasons: list[str | None],
                  answers: dict[str, str] | None, cfg: DataConfig, counters: Counters) -> dict[str, Any]:
    """dataset.parquet (kept rows with answers) and rejected.parquet (every drop, with its reason).

    `answers` maps an instruction key to its response key; None takes any stored
    response for the same instruction text (used when merging shards).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lamini_serve.paths import atomic_write_bytes

    responses = store.responses()
    by_text: dict[str, dict[str, Any]] = {}
    if answers is None:
        for k in sorted(responses):
            by_text.setdefault(responses[k]["instruction"], responses[k])
    rows, rejected = [], []
    missing = 0
    for r, why in zip(pool, reasons):
        if why is not None:
            rejected.append({"instruction": r["instruction"], "instruction_source": r["source"], "reason": why,
                             "instruction_key": r["key"]})
            continue
        resp = responses.get(answers.get(r["key"], "")) if answers is not None else by_text.get(r["instruction"])
        if resp is None:
            # A seed without an answer is a reference for dedup (or another shard's), not a failure.
            missing += r["source"] != "seed"
            continue
        rows.append({
            "instruction": r["instruction"],
            "response": resp["response"],
            "instruction_source": r["source"],
            "teacher": resp["teacher"],
            "response_params": resp["params"],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(resp["created_at"])),
            "prompt_tokens": resp["prompt_tokens"],
            "completion_tokens": resp["completion_tokens"],
            "finish_reason": resp["finish_reason"],
            "key": resp["key"],
            "instruction_key": r["key"],
        })
    schema = pa.schema([("instruction", pa.string()), ("response", pa.string()), ("instruction_source", pa.string()),
                        ("teacher", pa.string()), ("response_params", pa.string()), ("created_at", pa.string()),
                        ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
                        ("finish_reason", pa.string()), ("key", pa.string()), ("instruction_key", pa.string())])
    rej_schema = pa.schema([("instruction", pa.string()), ("instruction_source", pa.string()), ("reason", pa.string()),
                            ("instruction_key", pa.string())])
    for name, data, sch in ((DATASET, rows, schema), (REJECTED, rejected, rej_schema)):
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(data, schema=sch), sink)
        atomic_write_bytes(run_dir / name, sink.getvalue().to_pybytes())
    if cfg.jsonl:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        atomic_write_bytes(run_dir / "dataset.jsonl", text.encode("utf-8"))
    per_source: dict[str, int] = {}
    for r in rows:
        per_source[r["instruction_source"]] = per_source.get(r["instruction_source"], 0) + 1
    drops: dict[str, int] = {}
    for r in rejected:
        kind = reason_kind(r["reason"])
        drops[kind] = drops.get(kind, 0) + 1
    return {"rows": len(rows), "per_source": per_source, "rejected": len(rejected), "rejected_by_reason": drops,
            "unanswered": missing, "failures_this_run": dict(counters),
            "failures_logged": store.count("failures"), "dataset": str(run_dir / DATASET)}


def reason_kind(reason: str) -> str:
    """"near duplicate of row 12 (similarity 0.81)" -> "near duplicate": for counting."""
    return re.sub(r"\s*\(.*\)$", "", re.sub(r" of row \d+", "", reason)).strip()


def merge_runs(out: str | Path, runs: list[str | Path], cfg: DataConfig | None = None) -> dict[str, Any]:
    """Join shard stores into `out` and write one dataset (global dedup across shards)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg or DataConfig(out=str(out), stats=False)
    with Store(out / "store.sqlite") as store:
        for run in runs:
            store.merge_from(Path(run) / "store.sqlite")
        pool = store.instructions()
        pool.sort(key=lambda r: (r["source"] != "seed",))
        reasons = screen(pool, cfg)
        summary = write_dataset(out, store, pool, reasons, None, cfg, Counters())
    summary["merged_from"] = [str(r) for r in runs]
    write_run_record(out, cfg, "merged", summary)
    return summary


def import_dataset(source: str, out: str | Path, columns: dict[str, str], split: str = "train",
                   dedup: DedupConfig = DedupConfig(), filters: FilterConfig = FilterConfig()) -> dict[str, Any]:
    """An existing dataset through the same filters and dedup, written in the LaMini schema."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = DataConfig(out=str(out), dedup=dedup, filters=filters, stats=False)
    seeds = load_seeds(source, columns, split)
    teacher = f"imported:{source}"
    with Store(out / "store.sqlite") as store:
        texts = [with_input(s.instruction, s.input) for s in seeds]
        call_key = stable_hash({"stage": "import", "source": source, "texts": texts})
        if call_key not in store.keys("calls"):
            store.add_call(call_key, "import", f"imported:{Path(source).stem if Path(source).exists() else source}", "", texts)
            for text, s in zip(texts, seeds):
                if s.output:
                    key = stable_hash({"stage": "import", "instruction": text, "response": s.output})
                    store.add_response(key, text, s.output, teacher, {}, 0, 0, None)
        pool = [r for r in store.instructions() if r["call_key"] == call_key]
        reasons = screen([dict(r, source="imported") for r in pool], cfg)
        summary = write_dataset(out, store, pool, reasons, None, cfg, Counters())
    write_run_record(out, cfg, teacher, summary)
    return summary
