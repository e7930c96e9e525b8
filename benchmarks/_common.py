"""Shared bits of the benchmark scripts: a table printer, the JSON writer, peak memory."""

from __future__ import annotations

import json
import platform
import resource
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def peak_rss_mib() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    import os

    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count()}


def report(name: str, title: str, rows: list[tuple[str, str]], data: dict, out: str | None = None) -> Path:
    width = max(len(r[0]) for r in rows + [(title, "")])
    print(f"{title:<{width}}  value")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, **data, "machine": machine()}, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def bench_teacher_export() -> Path:
    """The embedded teacher's export (int8 default, fp32 beside it), made once and kept in LAMINI_HOME."""
    import subprocess
    import sys

    from lamini_serve.paths import lamini_home

    out = lamini_home() / "bench" / "teacher-onnx"
    if not (out / "export.json").is_file():
        subprocess.run([sys.executable, "-m", "lamini_serve", "export", "embedded", str(out)], check=True)
    return out
