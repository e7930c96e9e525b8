"""Seed instructions: the built-in set, or the user's (JSONL, CSV, Parquet, a hub dataset)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lamini_serve.errors import LaminiError
from lamini_serve.tables import jsonl_rows, read_parquet

BUILTIN = "builtin"


@dataclass(frozen=True)
class Seed:
    instruction: str
    input: str = ""
    output: str = ""
    category: str = ""


def _resource(name: str) -> str:
    return resources.files("lamini_serve.data").joinpath("resources", name).read_text(encoding="utf-8")


def builtin_topics() -> list[str]:
    return [t.strip() for t in _resource("topics.txt").splitlines() if t.strip()]


def load_topics(source: str = BUILTIN) -> list[str]:
    if source == BUILTIN:
        return builtin_topics()
    p = Path(source).expanduser()
    if not p.is_file():
        raise LaminiError(f"--topics {source}: no such file; pass a text file with one topic per line, or 'builtin'")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LaminiError(f"--topics {source} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    topics = [t.strip() for t in text.splitlines() if t.strip() and not t.startswith("#")]
    if len(topics) < 3:
        raise LaminiError(f"--topics {source}: needs at least 3 topics (one per line), found {len(topics)}")
    return topics


def load_seeds(source: str = BUILTIN, columns: dict[str, str] | None = None, split: str = "train") -> list[Seed]:
    """Seeds from 'builtin', a .jsonl/.json/.csv/.parquet file, or a hub dataset id.

    `columns` maps our names (instruction, input, output) to the file's, e.g.
    {"instruction": "prompt", "output": "completion"}.
    """
    columns = columns or {}
    unknown = set(columns) - {"instruction", "input", "output"}
    if unknown:
        raise LaminiError(f"unknown column mapping {', '.join(sorted(unknown))}; map instruction, input or output")
    if source == BUILTIN:
        rows = jsonl_rows(_resource("seeds.jsonl"), "built-in seeds")
    else:
        p = Path(source).expanduser()
        if p.is_file():
            suffix = p.suffix.lower()
            if suffix not in (".jsonl", ".json", ".csv", ".parquet"):
                raise LaminiError(f"{source}: unknown seed file type {suffix!r}; use .jsonl, .json, .csv or .parquet")
            rows = read_rows(p)
        elif p.exists() or source.startswith((".", "/", "~")):
            raise LaminiError(f"{source}: no such seed file")
        else:
            rows = _hub_rows(source, split)
    return _to_seeds(rows, columns, source)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a .jsonl/.json/.csv/.parquet file, or a one-line error saying why they cannot be read."""
    p = Path(path)
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            rows = read_parquet_rows(p)
        elif suffix == ".csv":
            with open(p, newline="", encoding="utf-8-sig") as f:  # Excel writes a byte-order mark
                rows = list(csv.DictReader(f))
        else:
            text = p.read_text(encoding="utf-8")
            if suffix == ".json" and text.lstrip().startswith("["):
                try:
                    rows = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise LaminiError(f"{p} is not valid JSON ({exc.msg} at line {exc.lineno}); fix the file") from None
                if not all(isinstance(r, dict) for r in rows):
                    raise LaminiError(f"{p}: a JSON list of objects is needed, one per row")
            else:
                rows = jsonl_rows(text, str(p))
    except UnicodeDecodeError as exc:
        raise LaminiError(f"{p} is not UTF-8 text (byte {exc.start}); save it as UTF-8, or as Parquet") from None
    except csv.Error as exc:
        raise LaminiError(f"{p} is not a readable CSV file ({exc}); fix the file") from None
    return rows


def read_parquet_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a Parquet file; a file that is not Parquet (or is cut short) is a one-line error."""
    return read_parquet(path, fix="write it again, or pass a .jsonl/.csv file")


def _hub_rows(dataset_id: str, split: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise LaminiError(f"{dataset_id!r} is not a file; to read hub datasets install `datasets` (pip install datasets)") from None
    try:
        return list(datasets.load_dataset(dataset_id, split=split))
    except Exception as exc:  # the hub raises many types; the message is what matters
        raise LaminiError(f"could not load the dataset {dataset_id!r} ({type(exc).__name__}: {str(exc)[:160]}); "
                          f"check the id and network, or pass a local file") from None


def _to_seeds(rows: list[dict[str, Any]], columns: dict[str, str], where: str) -> list[Seed]:
    col = {k: columns.get(k, k) for k in ("instruction", "input", "output")}
    if "output" not in columns and rows and "output" not in rows[0] and "response" in rows[0]:
        col["output"] = "response"  # the LaMini schema's name for it
    for key in ("input", "output"):
        if key in columns and rows and columns[key] not in rows[0]:
            raise LaminiError(f"{where}: no column {columns[key]!r} for {key} (columns: {', '.join(list(rows[0])[:12])})")
    if rows and col["instruction"] not in rows[0]:
        have = ", ".join(list(rows[0])[:12])
        raise LaminiError(f"{where}: no column {col['instruction']!r} (columns: {have}); "
                          f"map yours with --column instruction=NAME")
    seeds = []
    for n, row in enumerate(rows, 1):
        text = row.get(col["instruction"])
        if not isinstance(text, str) or not text.strip():
            raise LaminiError(f"{where} row {n} has no {col['instruction']!r} text; fix or remove that row")
        seeds.append(Seed(text.strip(), str(row.get(col["input"]) or "").strip(), str(row.get(col["output"]) or "").strip(),
                          str(row.get("category") or "")))
    if not seeds:
        raise LaminiError(f"{where}: no seeds found")
    return seeds
