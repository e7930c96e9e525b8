"""The data stage end to end: plan, generate, filter, dedup, answer, write, describe.

Every unit of teacher work has a key (a hash of its prompt, the teacher's model
name and the sampling parameters: never the teacher's address) and lands in the
run's SQLite store as it completes. Running the same command again skips what is
stored, so a crash, a Ctrl-C or a SIGKILL costs only the units in flight. A reply
that is unusable (garbage, no instructions, an answer the filters reject) is asked
again; an answer the teacher gives the same reason for twice is rejected for good.
`--shard i/N` keeps the units whose key falls in shard i; `lamini data merge` joins
the shards' stores and writes one dataset.
"""

from __future__ import annotations

import json
import platform
import random
import re
import sys
import time
from collections import Counter
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
from lamini_serve.data.text import looks_like_garbage, stable_hash, with_input
from lamini_serve.errors import LaminiError
from lamini_serve.prompts import LAMINI_TEACHER_SYSTEM
from lamini_serve.teacher.client import Request, Result

DATASET = "dataset.parquet"
REJECTED = "rejected.parquet"
SOURCES = ("seed", "example_guided", "topic_guided")
# The finish reason of a stored answer that the filters rejected for good: it keeps its key
# (reruns skip it, merges carry it) and goes to rejected.parquet, with its reason in params.
ANSWER_REJECTED = "rejected"


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
        for name in ("gen_max_tokens", "resp_max_tokens"):  # None means the default for the teacher
            v = getattr(self, name)
            if v is not None and v < 1:
                raise LaminiError(f"{name} must be at least 1 (or unset for the default), got {v}")


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


def generation_key(teacher_id: str, kind: str, payload: dict[str, Any]) -> str:
    return stable_hash({"stage": "generate", "teacher": teacher_id, "kind": kind, "payload": payload})


def response_key(teacher_id: str, payload: dict[str, Any]) -> str:
    return stable_hash({"stage": "respond", "teacher": teacher_id, "payload": payload})


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
            key = generation_key(teacher_id, kind, payload)
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


def read_run_record(run_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_run_record(run_dir: Path, cfg: DataConfig, teacher_id: str, summary: dict[str, Any] | None = None,
                     provenance: dict[str, Any] | None = None) -> None:
    """run.json: what made this run; `provenance` is where the teacher was (its URL), which
    the work keys leave out."""
    from lamini_serve.paths import atomic_write_text

    path = run_dir / "run.json"
    history = read_run_record(run_dir).get("history", [])
    record = {"config": _jsonable(asdict(cfg)), "teacher": teacher_id, "teacher_provenance": provenance or {},
              "versions": versions(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "summary": summary or {}}
    if summary is not None:
        history = (history + [{"time": record["time"], "summary": summary}])[-20:]
    record["history"] = history
    atomic_write_text(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, (tuple, set)) else str(o)))


class ErrorTally:
    """The teacher's own messages: the first, and how often each came (bounded: a million
    distinct messages would not fit, nor help)."""

    MAX_MESSAGES = 1000

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None
        self.errors: Counter[str] = Counter()

    def add(self, message: str) -> None:
        message = " ".join(message.split())
        self.count += 1
        self.first = self.first or message
        if message in self.errors or len(self.errors) < self.MAX_MESSAGES:
            self.errors[message] += 1

    def report(self) -> dict[str, Any]:
        if not self.errors:
            return {}
        common, times = self.errors.most_common(1)[0]
        return {"first": self.first, "most_common": common, "most_common_count": times}

    def line(self) -> str:
        r = self.report()
        if not r:
            return ""
        same = r["first"] == r["most_common"]
        return (f"first error: {r['first']}" + ("" if same else f"; most common: {r['most_common']}")
                + f" ({r['most_common_count']} of {self.count})")


class Counters(dict):
    """Failures by name ("generate_failed", "respond_failed"), with the teacher's messages
    tallied over all of them and per name (a stage's own line quotes its own errors)."""

    def __init__(self) -> None:
        super().__init__()
        self.succeeded = 0  # replies this run that were usable (stored, or rejected by the filters)
        self.replied = 0  # requests this run that the teacher answered at all, usable or not
        self.all = ErrorTally()
        self.by_name: dict[str, ErrorTally] = {}

    def bump(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n

    def failed(self, name: str, message: str) -> None:
        self.bump(name)
        self.all.add(message)
        self.by_name.setdefault(name, ErrorTally()).add(message)

    @property
    def n_failed(self) -> int:
        return sum(self.values())

    def report(self) -> dict[str, Any]:
        return self.all.report()

    def line(self, name: str | None = None) -> str:
        """The first and most common message: of every failure, or of counter `name`'s alone."""
        tally = self.all if name is None else self.by_name.get(name, ErrorTally())
        return tally.line()


def run_teacher_stage(teacher, todo: list[Request], on_ok, store: Store, stage: str, counters: Counters,
                      label: str, unit: str, on_rejected=None) -> None:
    """Send `todo` to the teacher; `on_ok(result)` stores a usable result and returns None, or
    returns why the reply is unusable (garbage, no instructions, rejected by the filters).

    An unusable reply is asked again within the teacher's retry budget, until the teacher
    gives the same reason twice (this run, or this run and the last failure logged for the
    key): it means it. Then `on_rejected(result, why)` keeps the verdict for good (an answer
    the filters always reject, not asked again); without one, as when the budget runs out
    or the request itself failed, the unit is logged as failed and the next run asks again.
    """
    from lamini_serve.progress import Progress

    if not todo:
        return
    budget = getattr(teacher, "max_retries", 0)
    said = {f["key"]: f["error"] for f in store.failures(stage)}  # the reason last given, by key
    asked_again: Counter[str] = Counter()
    again: set[str] = set()  # the keys to ask again after this round
    resent = 0
    with Progress(label, len(todo), unit) as bar:
        def on_result(res: Result) -> None:
            nonlocal resent
            ok = False
            if not res.ok:
                store.add_failure(res.key, stage, res.error or "failed")
                counters.failed(f"{stage}_failed", res.error or "failed")
            else:
                counters.replied += 1
                why = on_ok(res)
                repeated = why is not None and said.get(res.key) == why
                if why is None:
                    ok = True
                elif repeated and on_rejected is not None:
                    on_rejected(res, why)
                    ok = True
                elif not repeated and asked_again[res.key] < budget:
                    said[res.key] = why
                    asked_again[res.key] += 1
                    resent += 1
                    again.add(res.key)
                    return  # not finished: no progress yet
                else:
                    store.add_failure(res.key, stage, why, res.completion.text)
                    counters.failed(f"{stage}_failed", why)
            if ok:
                counters.succeeded += 1
            bar.retries = getattr(teacher, "retries", 0) + resent
            bar.advance(ok=ok)

        while todo:
            again.clear()
            teacher.run(todo, on_result)
            todo = [r for r in todo if r.key in again]


def work_teacher(store: Store, previous: dict[str, Any], teacher) -> str:
    """The teacher's name in this store's work keys: its model name (`teacher.id`).

    Stores made before the address left the keys used "model@url" there; for the same model
    that string stays pinned (in the store's meta table), so their finished work is reused
    whichever address reaches the teacher now.
    """
    name = f"work_teacher:{teacher.id}"
    row = store.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    if row:
        return json.loads(row[0])
    old = previous.get("teacher")
    if getattr(teacher, "kind", "") == "http" and isinstance(old, str) and old.startswith(f"{teacher.id}@http"):
        store.set_meta(name, old)
        return old
    return teacher.id


def forget_empty_calls(store: Store, keys: set[str]) -> None:
    """Stores made before a call without instructions counted as failed hold such calls as done:
    forget them, so that they are asked again, as a clean run would have them."""
    empty = [k for (k,) in store.db.execute("SELECT key FROM calls WHERE n_items = 0") if k in keys]
    if empty:
        store.db.executemany("DELETE FROM calls WHERE key = ? AND n_items = 0", [(k,) for k in empty])


def run_data(cfg: DataConfig, teacher, log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict[str, Any]:
    """The whole data stage; returns a summary. Safe to rerun: finished work is skipped.

    Raises LaminiError, after writing what there is, when every request this run made failed.
    """
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    seeds = load_seeds(cfg.seeds, cfg.columns)
    topics = load_topics(cfg.topics) if cfg.topic_calls else []
    style = cfg.style if cfg.style != "auto" else teacher.style
    previous = read_run_record(run_dir)
    provenance = getattr(teacher, "provenance", None)
    write_run_record(run_dir, cfg, teacher.id, provenance=provenance)
    counters = Counters()
    with Store(run_dir / "store.sqlite") as store:
        key_teacher = work_teacher(store, previous, teacher)
        # 1. The seeds (one pseudo-call holds them): generated rows are deduplicated against
        # them always; they join the dataset only with --answer-seeds.
        seed_texts = [with_input(s.instruction, s.input) for s in seeds]
        seed_key = stable_hash({"stage": "seeds", "seeds": seed_texts})
        if seed_key not in store.keys("calls"):
            store.add_call(seed_key, "seeds", "seed", "", seed_texts)

        # 2. New instructions.
        plan = plan_generation(cfg, seeds, topics, style, key_teacher)
        forget_empty_calls(store, {p.request.key for p in plan})
        done = store.keys("calls")
        todo = [p for p in plan if p.request.key not in done]
        log(f"Generation: {len(plan)} calls planned ({style} prompts), {len(plan) - len(todo)} already done")
        by_key = {p.request.key: p for p in todo}

        def store_call(res: Result) -> str | None:
            p, c = by_key[res.key], res.completion
            items = parse_instructions(c.text, style, p.examples, limit=how_many(p.examples))
            if c.cut and items:
                items = items[:-1]  # the last item was cut off by the token limit
            if not items:  # not stored: a call without instructions is asked again, as a clean run would have it
                return looks_like_garbage(c.text) or "no instructions in the output"
            store.add_call(res.key, p.request.kind, p.source, c.text, items, c.prompt_tokens, c.completion_tokens)
            return None

        run_teacher_stage(teacher, [p.request for p in todo], store_call, store, "generate", counters,
                          "generating instructions", "calls")
        report_failures(log, "generate", counters)

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
            key = response_key(key_teacher, payload)
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
            c = res.completion
            why = response_reason(c.text, cfg.filters)
            if why:
                return why
            store.add_response(res.key, instr_of[res.key], c.text.strip(), teacher.id, resp_params,
                               c.prompt_tokens, c.completion_tokens, c.finish_reason)
            return None

        def reject_response(res: Result, why: str) -> None:
            c = res.completion
            store.add_response(res.key, instr_of[res.key], c.text.strip(), teacher.id, {**resp_params, "rejected": why},
                               c.prompt_tokens, c.completion_tokens, ANSWER_REJECTED)

        run_teacher_stage(teacher, todo_r, store_response, store, "respond", counters, "answering", "answers",
                          on_rejected=reject_response)
        report_failures(log, "respond", counters)

        # 5. The dataset.
        summary = write_dataset(run_dir, store, pool, reasons, answers, cfg, counters)
        summary["style"] = style
    write_run_record(run_dir, cfg, teacher.id, summary, provenance)
    # Fatal only when the teacher answered nothing at all (400s, 500s, stalls): replies that
    # were unusable are the teacher's content, and a seeded call repeats its reply on every rerun.
    if counters.n_failed and not counters.replied:
        failed = ", ".join(f"{k} {v}" for k, v in counters.items())
        raise LaminiError(
            f"every request to the teacher failed this run ({failed}; the dataset has {summary['rows']} rows); "
            f"{counters.line()}; fix what the teacher says, then run the same command again: finished work is kept")
    if cfg.stats and summary["rows"]:
        from lamini_serve.data.stats import describe

        describe(run_dir / DATASET, run_dir)
    return summary


def report_failures(log, stage: str, counters: Counters) -> None:
    n = counters.get(f"{stage}_failed", 0)
    if n:
        log(f"{stage}: {n} failed, asked again when you run the same command again; "
            f"{counters.line(f'{stage}_failed')}")


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
    if answers is None:  # a kept answer wins over one rejected elsewhere (another shard, another teacher)
        for k in sorted(responses, key=lambda k: (responses[k]["finish_reason"] == ANSWER_REJECTED, k)):
            by_text.setdefault(responses[k]["instruction"], responses[k])
    rows, rejected = [], []
    missing = 0
    for r, why in zip(pool, reasons):
        resp = None
        if why is None:
            resp = responses.get(answers.get(r["key"], "")) if answers is not None else by_text.get(r["instruction"])
            if resp is not None and resp["finish_reason"] == ANSWER_REJECTED:
                why = f"answer rejected: {json.loads(resp['params']).get('rejected', 'by the filters')}"
        if why is not None:
            rejected.append({"instruction": r["instruction"], "instruction_source": r["source"], "reason": why,
                             "instruction_key": r["key"]})
            continue
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
            "unanswered": missing, "failures_this_run": dict(counters), "errors_this_run": counters.report(),
            "failures_logged": store.count("failures"), "dataset": str(run_dir / DATASET)}


def reason_kind(reason: str) -> str:
    """"near duplicate of row 12 (similarity 0.81)" -> "near duplicate": for counting."""
    return re.sub(r"\s*\(.*\)$", "", re.sub(r" of row \d+", "", reason)).strip()


def merge_runs(out: str | Path, runs: list[str | Path], cfg: DataConfig | None = None) -> dict[str, Any]:
    """Join shard stores into `out` and write one dataset (global dedup across shards).

    Merging into an earlier merge adds to it. The result is built in a staging folder
    beside `out` and moved in at the end, so a merge that fails (a damaged shard
    store, a full disk) leaves `out` as it was: no empty store, no half dataset.
    """
    import os
    import shutil

    from lamini_serve.paths import scratch_dir

    out = Path(out)
    cfg = cfg or DataConfig(out=str(out), stats=False)
    with scratch_dir(out.resolve().parent, out.name) as staging:
        staged = staging / "store.sqlite"
        if (out / "store.sqlite").is_file():
            with Store(out / "store.sqlite") as earlier:
                earlier.copy_to(staged)
        with Store(staged) as store:
            for run in runs:
                store.merge_from(Path(run) / "store.sqlite")
            pool = store.instructions()
            pool.sort(key=lambda r: (r["source"] != "seed",))
            reasons = screen(pool, cfg)
            summary = write_dataset(staging, store, pool, reasons, None, cfg, Counters())
        summary["dataset"] = str(out / DATASET)
        summary["merged_from"] = [str(r) for r in runs]
        if (out / "run.json").is_file():
            shutil.copy2(out / "run.json", staging / "run.json")  # its history goes on
        write_run_record(staging, cfg, "merged", summary)
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(staging.iterdir()):
            if not f.name.startswith(staged.name):  # the store (checkpointed on close) goes last
                os.replace(f, out / f.name)
        # The old store's write-ahead log would be replayed into the new store: it goes first.
        for side in ("store.sqlite-wal", "store.sqlite-shm"):
            (out / side).unlink(missing_ok=True)
        os.replace(staged, out / "store.sqlite")
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
