"""Where `lamini ui` keeps people's judgements: one SQLite file (WAL).

Three tables:
- `votes`: arena battles, one row per battle (`battle_id` is unique, so a vote sent
  twice counts once), with both conversations, the two model names, the sampling
  settings, the rater's session and the time.
- `answers`: the human-evaluation answers, generated once per (instruction set,
  item, model) and stored, so every rater grades the same text.
- `ratings`: one A-D grade per (set, item, model, rater); a rater who grades the
  same answer again replaces their grade.

Every connection is opened per thread and writes in `BEGIN IMMEDIATE`
transactions with a long busy timeout, so many people voting at once neither lose
nor double a vote. A file that is not ours (not SQLite, another program's
database, damaged) is refused with a one-line error and left untouched.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from lamini_serve.errors import LaminiError
from lamini_serve.paths import fixable_write_errors, lamini_home

APPLICATION_ID = 0x4C4D5549  # "LMUI": `PRAGMA application_id` of a lamini ui database
SCHEMA_VERSION = 1
WINNERS = ("model_a", "model_b", "tie", "both_bad")
GRADES = ("A", "B", "C", "D")
GRADE_MEANINGS = {
    "A": "valid and satisfying: the answer does what was asked, correctly and well",
    "B": "acceptable, with minor errors or imperfections",
    "C": "relevant, but with significant errors",
    "D": "invalid or unacceptable: off topic, wrong, or not an answer",
}
_HEADER = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    battle_id TEXT PRIMARY KEY,
    model_a TEXT NOT NULL,
    model_b TEXT NOT NULL,
    winner TEXT NOT NULL CHECK (winner IN ('model_a', 'model_b', 'tie', 'both_bad')),
    conversation_a TEXT NOT NULL,
    conversation_b TEXT NOT NULL,
    settings TEXT NOT NULL,
    rater TEXT NOT NULL,
    session TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS answers (
    set_name TEXT NOT NULL,
    item_id TEXT NOT NULL,
    model TEXT NOT NULL,
    instruction TEXT NOT NULL,
    answer TEXT NOT NULL,
    settings TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (set_name, item_id, model, settings)
);
CREATE TABLE IF NOT EXISTS ratings (
    set_name TEXT NOT NULL,
    item_id TEXT NOT NULL,
    model TEXT NOT NULL,
    rater TEXT NOT NULL,
    grade TEXT NOT NULL CHECK (grade IN ('A', 'B', 'C', 'D')),
    instruction TEXT NOT NULL,
    answer TEXT NOT NULL,
    settings TEXT NOT NULL,
    session TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (set_name, item_id, model, rater)
);
"""


def default_db() -> Path:
    return lamini_home() / "ui" / "votes.db"


@dataclass(frozen=True)
class Vote:
    battle_id: str
    model_a: str
    model_b: str
    winner: str
    conversation_a: list
    conversation_b: list
    settings: dict
    rater: str
    session: str
    endpoint: str = ""
    created: float = 0.0


def _problem(path: Path, what: str) -> LaminiError:
    return LaminiError(f"{path} {what}; it was left untouched: pass another --db (or move that file away)")


def _read(path: Path, mode: str, *queries: str) -> list:
    """The first value of each query, on a connection opened with URI parameters `mode` (never for writing)."""
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True)) as con:
        return [con.execute(q).fetchone()[0] for q in queries]


def check_file(path: Path) -> bool:
    """True when `path` is a lamini ui database, False when it does not exist (or is empty).

    Anything else (not SQLite, damaged, another program's database, a newer
    schema) is a LaminiError, and the file is only read, never written.
    """
    path = Path(path)
    if not path.exists():
        return False
    if path.is_dir():
        raise LaminiError(f"{path} is a folder; --db needs a file path such as {path / 'votes.db'}")
    try:
        with path.open("rb") as f:
            head = f.read(100)  # the database header
    except OSError as exc:
        raise LaminiError(f"cannot read {path} ({exc.strerror or exc}); check its permissions") from None
    if not head:
        return False
    if not head.startswith(_HEADER) or len(head) < 100:
        raise _problem(path, "is not an SQLite database")
    # Ours sets its application id in the header and checkpoints it there at once, so another
    # program's file is told apart without opening it for anything but an immutable read.
    app_id = int.from_bytes(head[68:72], "big")
    if app_id != APPLICATION_ID:
        if app_id != 0:
            raise _problem(path, "is another program's SQLite database (its application id is not lamini ui's)")
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise _problem(path, "is another program's SQLite database, in use or not closed cleanly (it has a "
                                 f"{wal.name} beside it)")
        try:
            (tables,) = _read(path, "mode=ro&immutable=1", "SELECT COUNT(*) FROM sqlite_master")
        except sqlite3.DatabaseError as exc:
            raise _problem(path, f"is a damaged SQLite database ({exc})") from None
        if tables:
            raise _problem(path, "is another program's SQLite database, not a lamini ui one")
        return False  # an empty SQLite file: ours to set up
    try:
        version, ok = _read(path, "mode=ro", "PRAGMA user_version", "PRAGMA quick_check")
    except sqlite3.DatabaseError as exc:
        raise _problem(path, f"is a damaged lamini ui database ({exc})") from None
    if ok != "ok":
        raise _problem(path, f"is a damaged lamini ui database ({ok})")
    if version > SCHEMA_VERSION:
        raise LaminiError(f"{path} was written by a newer lamini-serve (schema {version}); upgrade lamini-serve "
                          "or pass another --db")
    return True


class Store:
    """Thread-safe access to one lamini ui database (a connection per thread)."""

    def __init__(self, path: str | Path | None = None, *, readonly: bool = False):
        self.path = Path(path) if path is not None else default_db()
        self.readonly = readonly
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        exists = check_file(self.path)
        if readonly:
            if not exists:
                what = "is empty" if self.path.exists() else "does not exist"
                raise LaminiError(f"{self.path} {what}; pass the --db that `lamini ui` wrote (default {default_db()})")
            return
        try:
            with fixable_write_errors(self.path):
                self._setup()
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise LaminiError(f"cannot use {self.path} as the votes database ({getattr(exc, 'strerror', None) or exc});"
                              " pass a --db in a folder you can write") from None

    def _setup(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._con()
        con.execute("PRAGMA journal_mode = WAL")
        with self._write() as c:
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                c.execute(stmt)
            c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the application id into the file's header now

    # -- connections ------------------------------------------------------------------
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            if self.readonly:
                con = self._readonly_con()
            else:
                con = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
                con.execute("PRAGMA synchronous = NORMAL")
            con.execute("PRAGMA busy_timeout = 60000")
            self._local.con = con
            with self._lock:
                self._all.append(con)
        return con

    def _readonly_con(self) -> sqlite3.Connection:
        """Read-only; in a folder where SQLite cannot make its -shm file, an immutable read of the file."""
        uri = self.path.resolve().as_uri()
        for query in ("?mode=ro", "?mode=ro&immutable=1"):
            con = sqlite3.connect(uri + query, uri=True, timeout=60, isolation_level=None, check_same_thread=False)
            try:
                con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                return con
            except sqlite3.OperationalError:
                con.close()
        raise LaminiError(f"cannot read {self.path}; check its permissions and its folder's")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise LaminiError(f"{self.path} was opened read-only")
        con = self._con()
        try:
            with fixable_write_errors(self.path):
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield con
                    con.execute("COMMIT")
                except BaseException:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    raise
        except sqlite3.OperationalError as exc:  # full disk, read-only file, a lock held for a minute
            raise LaminiError(f"cannot write to {self.path} ({exc}); free space or pass another --db") from None

    def close(self) -> None:
        with self._lock:
            for con in self._all:
                with contextlib.suppress(sqlite3.Error):
                    con.close()
            self._all.clear()
        self._local = threading.local()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- arena ------------------------------------------------------------------------
    def add_vote(self, vote: Vote) -> bool:
        """Record one battle's vote; False when that battle already has one (it counts once)."""
        if vote.winner not in WINNERS:
            raise ValueError(f"winner must be one of {WINNERS}, not {vote.winner!r}")
        if vote.model_a == vote.model_b:
            raise ValueError("a battle needs two different models")
        with self._write() as con:
            cur = con.execute(
                "INSERT OR IGNORE INTO votes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (vote.battle_id, vote.model_a, vote.model_b, vote.winner, json.dumps(vote.conversation_a),
                 json.dumps(vote.conversation_b), json.dumps(vote.settings, sort_keys=True), vote.rater,
                 vote.session, vote.endpoint, vote.created or time.time()))
            return cur.rowcount == 1

    def votes(self) -> list[Vote]:
        rows = self._con().execute(
            "SELECT battle_id, model_a, model_b, winner, conversation_a, conversation_b, settings, rater, session, "
            "endpoint, created FROM votes ORDER BY created, battle_id").fetchall()
        return [Vote(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]), json.loads(r[6]), r[7], r[8],
                     r[9], r[10]) for r in rows]

    # -- human evaluation -------------------------------------------------------------
    _ANSWER = "SELECT answer FROM answers WHERE set_name = ? AND item_id = ? AND model = ? AND settings = ?"

    def answer(self, set_name: str, item_id: str, model: str, settings: dict) -> str | None:
        """The stored answer of `model` to one item, made with these sampling settings."""
        row = self._con().execute(self._ANSWER, (set_name, item_id, model, json.dumps(settings, sort_keys=True)))
        row = row.fetchone()
        return row[0] if row else None

    def put_answer(self, set_name: str, item_id: str, model: str, instruction: str, answer: str,
                   settings: dict, endpoint: str = "") -> str:
        """Store an answer unless one is stored already; return the stored one (the first writer's)."""
        key = json.dumps(settings, sort_keys=True)
        with self._write() as con:
            con.execute("INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (set_name, item_id, model, instruction, answer, key, endpoint, time.time()))
            return con.execute(self._ANSWER, (set_name, item_id, model, key)).fetchone()[0]

    def rate(self, set_name: str, item_id: str, model: str, rater: str, grade: str, *, instruction: str,
             answer: str, settings: dict, session: str) -> None:
        """Record `rater`'s grade of one answer; grading it again replaces the grade."""
        if grade not in GRADES:
            raise ValueError(f"grade must be one of {GRADES}, not {grade!r}")
        if not rater.strip():
            raise ValueError("a rating needs the rater's name")
        with self._write() as con:
            con.execute(
                "INSERT INTO ratings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (set_name, item_id, model, rater) DO UPDATE SET grade = excluded.grade, "
                "answer = excluded.answer, settings = excluded.settings, session = excluded.session, "
                "created = excluded.created",
                (set_name, item_id, model, rater, grade, instruction, answer, json.dumps(settings, sort_keys=True),
                 session, time.time()))

    def rated(self, set_name: str, rater: str) -> dict[str, set[str]]:
        """{item_id: models} that `rater` has graded in `set_name`."""
        out: dict[str, set[str]] = {}
        for item, model in self._con().execute(
                "SELECT item_id, model FROM ratings WHERE set_name = ? AND rater = ?", (set_name, rater)):
            out.setdefault(item, set()).add(model)
        return out

    def ratings(self, set_name: str | None = None) -> list[dict[str, Any]]:
        sql = ("SELECT set_name, item_id, model, rater, grade, instruction, answer, settings, session, created "
               "FROM ratings")
        args: Sequence = ()
        if set_name is not None:
            sql += " WHERE set_name = ?"
            args = (set_name,)
        keys = ("set_name", "item_id", "model", "rater", "grade", "instruction", "answer", "settings", "session",
                "created")
        return [dict(zip(keys, r)) for r in self._con().execute(sql + " ORDER BY created", args)]

    def raters(self, set_name: str) -> dict[str, int]:
        """{rater: answers graded} for one instruction set."""
        return dict(self._con().execute(
            "SELECT rater, COUNT(*) FROM ratings WHERE set_name = ? GROUP BY rater ORDER BY rater", (set_name,)))
