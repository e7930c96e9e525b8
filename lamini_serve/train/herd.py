"""The herd's index, `OUT/herd.json`, built from the students' own folders.

Each trained student is a folder `OUT/<name>/` whose `lamini.json` (written last,
inside the atomic save) says it is a student and how to prompt it. The index is
derived from those folders alone, never from what one process trained, so a run of
one `--student`, each `--parallel-students` child and a full run all leave the
same, whole index. `lamini serve --herd` reads it, and can call `herd_index` to
rebuild it when herd.json is stale or missing.

    {
      "format_version": 1,
      "students": [                      # sorted by name
        {
          "name": "smol-6l",             # the recipe's student name
          "path": "smol-6l",             # its folder, relative to the folder of herd.json
          "family": "causal",            # causal | seq2seq
          "prompt_format": "chat",       # raw | alpaca | chat: how to prompt it
          "base": "teacher layers",      # its initial weights (hub id, folder, "teacher layers", "from config")
          "training": {...},             # the trainer's summary: train_loss, steps, seconds, examples, tokens,
                                         #   learning_rate, effective_batch, precision, packing, kd, rouge_l_*...
          "args": {...}                  # the TrainArgs it was trained with
        }
      ],
      "skipped": [{"path": "x", "reason": "..."}]   # folders with a lamini.json that could not be read
    }

Folders whose name starts with a dot (`.work`, staging folders `.tmp-*` of a save in
progress) and folders without a lamini.json are not students. `training` and `args`
are copied as the trainer recorded them, so what it adds later appears here too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lamini_serve.checkpoint import METADATA_FILE

HERD_FILE = "herd.json"
HERD_FORMAT_VERSION = 1
LOCK_FILE = ".herd.lock"


def herd_index(output_dir: str | Path) -> dict[str, Any]:
    """The index of the students saved under `output_dir` (see the module docstring); writes nothing."""
    root = Path(output_dir)
    students: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    for folder in folders:
        meta_path = folder / METADATA_FILE
        if not meta_path.is_file():
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            skipped.append({"path": folder.name, "reason": f"{METADATA_FILE} is unreadable ({type(exc).__name__})"})
            continue
        if not isinstance(meta, dict) or meta.get("role") != "student":
            continue  # another model kept beside the herd (a teacher, an export): not trained here
        if not meta.get("family") or not meta.get("prompt_format"):
            skipped.append({"path": folder.name, "reason": f"{METADATA_FILE} has no family or prompt_format"})
            continue
        students.append({
            "name": meta.get("student") or folder.name,
            "path": folder.name,
            "family": meta["family"],
            "prompt_format": meta["prompt_format"],
            "base": meta.get("base"),
            "training": meta.get("training", {}),
            "args": meta.get("args", {}),
        })
    return {"format_version": HERD_FORMAT_VERSION, "students": students, "skipped": skipped}


def write_herd_index(output_dir: str | Path) -> dict[str, Any]:
    """Rebuild `output_dir/herd.json` from the student folders, atomically; returns the index.

    Processes that finish students at the same time (parallel students, two `--student`
    runs) take turns under a lock: each saves its student before it scans, so the last
    to write has seen every finished folder.
    """
    from lamini_serve.paths import atomic_write_text

    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # no flock (Windows): the index can lag; herd_index() rebuilds it
            pass
        index = herd_index(root)
        atomic_write_text(root / HERD_FILE, json.dumps(index, indent=2, ensure_ascii=False) + "\n")
    return index
