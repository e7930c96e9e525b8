"""The run's store: SQLite, one row per finished unit of work, keyed by a hash of what made it.

A unit (a generation call, an answer) is written in one transaction as soon as
it completes, so a crash or a SIGKILL loses at most the units in flight, and a
rerun skips every key already here. Shards of one job write separate stores;
`merge` joins them (keys make the union exact).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
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

# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT = 3, 8, 10, 11
_SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 13, 14, 26
_USER_FIXABLE = {_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN,
                 _SQLITE_NOTADB}
# A full disk often shows as an I/O error (the shared-memory file of WAL mode cannot
# grow) rather than as SQLITE_FULL: below this much free space, call it full.
_NEARLY_FULL = 8 << 20


def store_error(path: str | Path, exc: sqlite3.Error, action: str = "open") -> LaminiError:
    """The one line for a store that cannot be used, naming the real cause and its fix.

    A full disk or a read-only folder must never be mistaken for a broken file: the
    advice for a broken one (move it away) throws away every finished unit.
    """
    from lamini_serve.paths import disk_full_error, unwritable_error

    path = Path(path)
    folder = path.parent
    code = sqlite_code(exc)
    if code == _SQLITE_FULL or (code == _SQLITE_IOERR and _free_bytes(folder) < _NEARLY_FULL):
        return disk_full_error(path, OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {exc}"))
    if code in (_SQLITE_READONLY, _SQLITE_PERM, _SQLITE_CANTOPEN, _SQLITE_IOERR) and not _writable(folder):
        return unwritable_error(folder, OSError(errno.EROFS if _read_only_fs(folder) else errno.EACCES, str(exc)))
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "no such table" in str(exc):
        return damaged_store_error(path, str(exc))
    return LaminiError(f"could not {action} the store {path} ({exc}); check the disk and the folder's permissions, "
                       f"then run the same command again: the work already in the store is kept")


# Python 3.10's sqlite3 errors carry no code: read it from SQLite's own message text.
_MESSAGE_CODES = (("database or disk is full", _SQLITE_FULL), ("disk i/o error", _SQLITE_IOERR),
                  ("readonly database", _SQLITE_READONLY), ("unable to open database", _SQLITE_CANTOPEN),
                  ("file is not a database", _SQLITE_NOTADB), ("malformed", _SQLITE_CORRUPT))


def sqlite_code(exc: sqlite3.Error) -> int:
    """SQLite's primary result code of an error (0 when it cannot be told)."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code:
        return code
    text = str(exc).lower()
    return next((known for words, known in _MESSAGE_CODES if words in text), 0)


def damaged_store_error(path: Path, why: str) -> LaminiError:
    return LaminiError(f"{path} is not a lamini store ({why}): the file is damaged or is something else; "
                       f"move it away and rerun (the work it held is done again)")


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK) and not _read_only_fs(folder)


class Store:
    def __init__(self, path: str | Path):
        from lamini_serve.paths import fixable_write_errors

        self.path = Path(path)
        with fixable_write_errors(self.path.parent):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = None
        try:
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # survives a killed process; WAL keeps it consistent
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            if self.db is not None:
                self.db.close()
            raise store_error(self.path, exc) from None

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
        return _Transaction(self.db, self.path)

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
        try:
            self.db.execute("ATTACH DATABASE ? AS other", (str(other),))
        except sqlite3.Error as exc:
            raise store_error(other, exc, "read") from None
        try:
            try:
                # Checked before copying, so that a damaged shard store is named as the
                # culprit rather than showing up as a failed write to this one.
                problems = self.db.execute("PRAGMA other.quick_check(1)").fetchone()[0]
                if problems != "ok":
                    raise damaged_store_error(other, problems)
                for table in ("calls", "instructions", "responses"):
                    self.db.execute(f"SELECT 1 FROM other.{table} LIMIT 1").fetchall()  # noqa: S608
            except sqlite3.Error as exc:
                raise store_error(other, exc, "read") from None
            added = {}
            with self._tx():
                for table in ("calls", "instructions", "responses"):
                    before = self.count(table)
                    self.db.execute(f"INSERT OR IGNORE INTO {table} SELECT * FROM other.{table}")  # noqa: S608
                    added[table] = self.count(table) - before
        finally:
            self.db.execute("DETACH DATABASE other")
        return added

    def copy_to(self, path: str | Path) -> None:
        """A consistent copy of the whole store (every table) at `path`, even while others write."""
        dst = sqlite3.connect(Path(path), isolation_level=None)
        try:
            self.db.backup(dst)
        except sqlite3.Error as exc:
            raise store_error(path, exc, "write") from None
        finally:
            dst.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT; a failure rolls back, and a full disk or a read-only
    folder becomes the one-line error that names it (the work committed before stays)."""

    def __init__(self, db: sqlite3.Connection, path: Path):
        self.db = db
        self.path = path

    def __enter__(self):
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self._error(exc) from None

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return False
            except sqlite3.OperationalError as commit_exc:
                exc = commit_exc
        # SQLite rolls back by itself after some errors (a full disk among them).
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError):
            raise self._error(exc) from None
        return False

    def _error(self, exc: sqlite3.OperationalError) -> Exception:
        # Only what the user can fix becomes a one-liner; anything else (a busy database,
        # a bug in a statement) keeps its traceback for a bug report.
        code = sqlite_code(exc)
        return store_error(self.path, exc, "write to") if code in _USER_FIXABLE else exc


def iter_chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
