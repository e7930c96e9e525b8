"""Where lamini-serve keeps things, how it writes them without leaving halves, and how a
command holds a folder for itself (`folder_lock`).

Everything heavy (weights, downloads, datasets) lives under `LAMINI_HOME`
(default `~/.cache/lamini`), never in the source tree.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from lamini_serve.errors import LaminiError

TMP_PREFIX = ".tmp-"
LOCK_NAME = ".lamini.lock"  # not a TMP_PREFIX name: clean_stale_tmp must never remove a held lock


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
        m = _STAGING_RE.match(p.name)
        if m is None:  # not a name lamini wrote (a user's own .tmp-something): never touch it
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _pid_alive(pid):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


# what _staging_name writes: .tmp-<pid>-<8 hex>-<name>
_STAGING_RE = re.compile(r"^" + re.escape(TMP_PREFIX) + r"(\d+)-[0-9a-f]{8}-.+$")


def _staging_name(final: Path) -> Path:
    return final.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{final.name}")


def disk_full_error(path: Path, exc: OSError) -> LaminiError:
    fix = "free some disk space"
    if _is_under(Path(path), lamini_home()):
        fix += " or point LAMINI_HOME at a bigger disk"
    return LaminiError(f"no space left on the device while writing {path} ({exc.strerror}); {fix}, "
                       f"then run the command again")


def unwritable_error(path: Path, exc: OSError) -> LaminiError:
    return LaminiError(f"cannot write to {path} ({exc.strerror}): the folder is read-only or not yours; "
                       f"pick a folder you can write to (or fix its permissions), then run the command again")


def write_error(path: Path, exc: OSError) -> LaminiError | None:
    """The one-line error for a write the user can fix (full disk, read-only folder), else None."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full_error(path, exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return unwritable_error(path, exc)
    return None


@contextlib.contextmanager
def fixable_write_errors(path: Path) -> Iterator[None]:
    """Inside: an OSError the user can fix (full disk, read-only folder) becomes its one-line
    error about `path`; any other OSError goes on as it is."""
    try:
        yield
    except OSError as exc:
        err = write_error(path, exc)
        if err is None:
            raise
        raise err from exc


def _is_under(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


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
        err = write_error(final, exc)
        if err:
            raise err from exc
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


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a staging path beside `final` for a writer that wants a file name (matplotlib, pyarrow).

    The staging file becomes `final` (fsynced, then renamed) when the block ends
    without error, so readers see the old file or the new one, never half of one;
    on an error it is removed. A SIGKILL leaves a `.tmp-*` file for
    `clean_stale_tmp`. The staging name ends with `final`'s name, so writers that
    pick a format from the suffix still do.
    """
    final = Path(final)
    with fixable_write_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging_name(final)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        err = write_error(final, exc) if isinstance(exc, OSError) else None
        if err:
            raise err from exc
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new, never half."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as a PNG atomically (a kill mid-write leaves no half-written plot), then close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[Path]:
    """Hold `folder` for this process alone; another process asking for it gets a one-line error.

    For commands that write into a folder and must not run twice at once on it (two
    `lamini data run` on one OUT would pay the teacher twice). `fcntl.flock` on
    `folder/.lamini.lock`: the kernel drops the lock when its process exits, however
    it exits (SIGKILL and power cuts included), so a lock is never stale. The file
    holds the holder's pid, only for the message. `folder` is created if missing,
    and removed again on the way out if it is still empty (a command that failed
    before writing anything leaves nothing behind).
    """
    import fcntl

    folder = Path(folder)
    created = not folder.exists()
    path = folder / LOCK_NAME
    for _ in range(100):  # each retry is a race with a holder that is just letting go
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            continue  # the last holder removed the empty folder between our mkdir and open
        except OSError as exc:
            err = write_error(folder, exc)
            if err:
                raise err from exc
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise LaminiError(
                f"{folder} is in use by another lamini command (pid {holder or 'unknown'}); "
                f"wait for it to finish or stop it, then run this again") from None
        except OSError as exc:  # no locks on this filesystem (some NFS mounts: ENOLCK)
            os.close(fd)
            raise LaminiError(f"cannot lock {path} ({exc.strerror or exc}); this filesystem does not support "
                              f"file locks: use a folder on a local disk") from None
        # The holder before us unlinks the file on release: a lock taken on an unlinked
        # file guards nothing, so make sure the one we locked is still the one at `path`.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise LaminiError(f"could not lock {path}: it keeps being removed; is another program cleaning {folder}?")
    try:
        with fixable_write_errors(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield folder
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when empty


def dir_size(path: Path, skip: tuple[str, ...] = (), follow_links: bool = True) -> int:
    """Total bytes of the regular files under `path`, leaving out any under a folder named in `skip`
    (and symlinked files unless `follow_links`)."""
    root = Path(path)
    return sum(p.stat().st_size for p in root.rglob("*")
               if p.is_file() and (follow_links or not p.is_symlink()) and not set(skip) & set(p.relative_to(root).parts))


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
