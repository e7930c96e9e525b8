"""The run's store: SQLite, one row per finished unit of work, keyed by a hash of what made it.

A unit (a generation call, an answer) is written in one transaction as soon as
it completes, so a crash or a SIGKILL loses at most the units in flight, and a
rerun skips every key already here. Shards of one job write separate stores;
`merge` joins them (keys make the union exact).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from lamini_serve.errors import LaminiError

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY, kind TEXT, source TEXT, raw TEXT, n_items INTEGER,
    prompt_tokens INTEGER, completion_tokens INTEGER, created_at REAL);
CREATE TABLE IF NOT EXISTS instructions (
    key TEXT PRIMARY KEY, call_key TEXT, idx INTEGER, instruction TEXT, source TEXT, created_at REAL);
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, instruction TEXT, response TEXT, teacher TEXT, params TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, finish_reason TEXT, created_at REAL);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT, stage TEXT, error TEXT, sample TEXT, created_at REAL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
"""
TABLES = ("calls", "instructions", "responses", "failures", "meta")


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # survives a killed process; WAL keeps it consistent
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise LaminiError(f"{self.path} is not a usable lamini store ({exc}); move it away and rerun") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writes: one transaction per finished unit ---------------------------
    def add_call(self, key: str, kind: str, source: str, raw: str, instructions: list[str],
                 prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        from lamini_serve.data.text import stable_hash

        now = time.time()
        with self._tx():
            self.db.execute(
                "INSERT OR IGNORE INTO calls VALUES (?,?,?,?,?,?,?,?)",
                (key, kind, source, raw, len(instructions), prompt_tokens, completion_tokens, now),
            )
            self.db.executemany(
                "INSERT OR IGNORE INTO instructions VALUES (?,?,?,?,?,?)",
                [(stable_hash([key, i]), key, i, text, source, now) for i, text in enumerate(instructions)],
            )

    def add_response(self, key: str, instruction: str, response: str, teacher: str, params: dict[str, Any],
                     prompt_tokens: int, completion_tokens: int, finish_reason: str | None) -> None:
        with self._tx():
            self.db.execute(
                "INSERT OR IGNORE INTO responses VALUES (?,?,?,?,?,?,?,?,?)",
                (key, instruction, response, teacher, json.dumps(params, sort_keys=True),
                 prompt_tokens, completion_tokens, finish_reason, time.time()),
            )

    def add_failure(self, key: str, stage: str, error: str, sample: str | None = None) -> None:
        with self._tx():
            self.db.execute("INSERT INTO failures VALUES (?,?,?,?,?)", (key, stage, error, (sample or "")[:500], time.time()))

    def set_meta(self, name: str, value: Any) -> None:
        with self._tx():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (name, json.dumps(value)))

    def _tx(self):
        return _Transaction(self.db)

    # ---- reads -----------------------------------------------------------------
    def keys(self, table: str) -> set[str]:
        return {k for (k,) in self.db.execute(f"SELECT key FROM {table}")}  # noqa: S608 (fixed names)

    def count(self, table: str) -> int:
        return self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608

    def instructions(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT key, instruction, source, call_key, idx FROM instructions ORDER BY call_key, idx")
        return [dict(key=k, instruction=t, source=s, call_key=c, idx=i) for k, t, s, c, i in cur]

    def responses(self) -> dict[str, dict[str, Any]]:
        cur = self.db.execute("SELECT key, instruction, response, teacher, params, prompt_tokens, completion_tokens, "
                              "finish_reason, created_at FROM responses")
        cols = ["key", "instruction", "response", "teacher", "params", "prompt_tokens", "completion_tokens",
                "finish_reason", "created_at"]
        return {row[0]: dict(zip(cols, row)) for row in cur}

    def failures(self, stage: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT key, stage, error, sample FROM failures" + (" WHERE stage = ?" if stage else "")
        return [dict(key=k, stage=s, error=e, sample=x) for k, s, e, x in self.db.execute(q, (stage,) if stage else ())]

    def merge_from(self, other: str | Path) -> dict[str, int]:
        """Copy every row of another store in (keys make this idempotent)."""
        other = Path(other)
        if not other.is_file():
            raise LaminiError(f"{other}: no such store; pass run folders made by `lamini data run`")
        added = {}
        self.db.execute("ATTACH DATABASE ? AS other", (str(other),))
        try:
            with self._tx():
                for table in ("calls", "instructions", "responses"):
                    before = self.count(table)
                    self.db.execute(f"INSERT OR IGNORE INTO {table} SELECT * FROM other.{table}")  # noqa: S608
                    added[table] = self.count(table) - before
        finally:
            self.db.execute("DETACH DATABASE other")
        return added


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


def iter_chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
