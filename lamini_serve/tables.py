"""Reading row files (Parquet, JSON lines) with one-line errors: every stage that takes
a dataset from a user reads it here, so a truncated or mislabelled file gets the same
clear message in `lamini data` and `lamini train` alike. `fix` is the stage's own advice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lamini_serve.errors import LaminiError


def _unreadable(path: Path, exc: Exception, fix: str) -> LaminiError:
    if isinstance(exc, PermissionError):
        return LaminiError(f"cannot read {path} (permission denied); give this user read access to it")
    why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return LaminiError(f"{path} is not a readable Parquet file ({why}); it may be cut short or be another format: {fix}")


def read_parquet(path: str | Path, fix: str) -> list[dict[str, Any]]:
    """The rows of a Parquet file; one that is not Parquet (or is cut short) is a one-line error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(Path(path), exc, fix) from None


def parquet_metadata(path: str | Path, fix: str):
    """A Parquet file's footer (schema, row count) without reading its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(Path(path), exc, fix) from None


def jsonl_rows(text: str, where: str, first_only: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of JSON-lines text; `where` names it in errors."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LaminiError(f"{where} line {n} is not valid JSON ({exc.msg}); fix or remove that line") from None
        if not isinstance(row, dict):
            raise LaminiError(f"{where} line {n} is not a JSON object; each line needs one {{...}} row")
        rows.append(row)
        if first_only:
            break
    return rows


def read_text(path: str | Path) -> str:
    """A UTF-8 text file; not UTF-8 or not readable is a one-line error."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LaminiError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise LaminiError(f"cannot read {path} ({exc.strerror or exc}); check that it is a readable file") from None
