"""Where lamini-serve keeps things, and how it writes them without leaving halves.

Everything heavy (weights, downloads, datasets) lives under `LAMINI_HOME`
(default `~/.cache/lamini`), never in the source tree.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from lamini_serve.errors import LaminiError

TMP_PREFIX = ".tmp-"


def lamini_home() -> Path:
    """The root of lamini-serve's cache: `$LAMINI_HOME` or `~/.cache/lamini`."""
    env = os.environ.get("LAMINI_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lamini"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(parent: Path) -> list[Path]:
    """Remove staging folders/files left by a process that died (killed, power cut).

    Staging names are `.tmp-<pid>-<rand>-<name>`; one whose pid still runs is kept,
    since another pull may be writing it right now.
    """
    removed = []
    if not parent.is_dir():
        return removed
    for p in parent.iterdir():
        if not p.name.startswith(TMP_PREFIX):
            continue
        try:
            pid = int(p.name[len(TMP_PREFIX):].split("-", 1)[0])
        except ValueError:
            pid = -1
        if pid > 0 and pid != os.getpid() and _pid_alive(pid):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _staging_name(final: Path) -> Path:
    return final.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{final.name}")


def disk_full_error(path: Path, exc: OSError) -> LaminiError:
    return LaminiError(
        f"no space left on the device while writing {path} ({exc.strerror}); "
        f"free some disk space or point LAMINI_HOME at a bigger disk, then run the command again"
    )


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside `final`; rename it to `final` on success.

    On any error (or Ctrl-C) the staging folder is removed, so `final` is either
    absent or complete. A SIGKILL leaves a `.tmp-*` folder that `clean_stale_tmp`
    removes on the next run.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_name(final)
    staging.mkdir()
    try:
        yield staging
        if final.exists():
            if not overwrite:
                raise LaminiError(f"{final} already exists; remove it or pass --overwrite")
            old = _staging_name(final)
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise disk_full_error(final, exc) from exc
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def scratch_dir(parent: Path, name: str = "work") -> Iterator[Path]:
    """A scratch folder under `parent`, removed on exit whatever happens."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    path = _staging_name(parent / name)
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise disk_full_error(path, exc) from exc
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dir_size(path: Path) -> int:
    """Total bytes of the regular files under `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
