"""paths.py: the folder lock, atomic files, and the one-line errors for writes a user can fix."""

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from lamini_serve.errors import LaminiError
from lamini_serve.paths import (
    LOCK_NAME,
    TMP_PREFIX,
    atomic_file,
    atomic_write_text,
    clean_stale_tmp,
    folder_lock,
    dir_size,
    write_error,
)


def _hold_lock(folder):
    """Another process holding `folder`'s lock until it is killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from lamini_serve.paths import folder_lock
        with folder_lock({str(folder)!r}):
            print("locked", flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_held_folder_is_refused_with_the_holders_pid_and_freed_by_a_kill(tmp_path):
    holder = _hold_lock(tmp_path / "out")
    try:
        with pytest.raises(LaminiError, match=rf"in use by another lamini command \(pid {holder.pid}\)"):
            with folder_lock(tmp_path / "out"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the dead holder's lock: no stale lock to clean by hand.
    with folder_lock(tmp_path / "out") as d:
        assert (d / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_the_lock_is_released_when_the_holder_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with folder_lock(tmp_path):
            raise RuntimeError("boom")
    with folder_lock(tmp_path):
        pass


def test_a_folder_the_lock_created_goes_away_if_nothing_was_written(tmp_path):
    with folder_lock(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()
    with folder_lock(tmp_path / "kept") as d:
        (d / "result.txt").write_text("x")
    assert os.listdir(tmp_path / "kept") == ["result.txt"]


def test_atomic_file_leaves_the_old_file_when_the_writer_is_killed(tmp_path):
    target = tmp_path / "lengths.png"
    target.write_bytes(b"old and complete")
    code = textwrap.dedent(f"""
        import os, signal
        from lamini_serve.paths import atomic_file
        with atomic_file({str(target)!r}) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old and complete"
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert len(left) == 1 and left[0].endswith("-lengths.png")
    assert [p.name for p in clean_stale_tmp(tmp_path)] == left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lengths.png"]


def test_atomic_file_removes_its_staging_file_on_an_error(tmp_path):
    with pytest.raises(ValueError):
        with atomic_file(tmp_path / "a.png") as tmp:
            tmp.write_bytes(b"partial")
            raise ValueError("the plot failed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
                                         (errno.EACCES, "read-only or not yours")])
def test_write_errors_a_user_can_fix_are_one_line(tmp_path, code, words):
    err = write_error(tmp_path / "f", OSError(code, os.strerror(code)))
    assert isinstance(err, LaminiError) and words in str(err) and "\n" not in str(err)
    assert write_error(tmp_path / "f", OSError(errno.EIO, "I/O error")) is None


def test_disk_full_names_lamini_home_only_for_files_under_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMINI_HOME", str(tmp_path / "home"))
    full = OSError(errno.ENOSPC, "No space left on device")
    assert "LAMINI_HOME" in str(write_error(tmp_path / "home" / "models" / "x", full))
    assert "LAMINI_HOME" not in str(write_error(tmp_path / "runs" / "data" / "store.sqlite", full))


def test_atomic_write_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(LaminiError, match="no space left on the device"):
        atomic_write_text(tmp_path / "run.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_stale_cleanup_touches_only_what_lamini_staged(tmp_path):
    """A folder of the user's that merely starts with .tmp- is theirs: cleaning must not delete it."""
    import os

    from lamini_serve.paths import clean_stale_tmp

    mine = tmp_path / ".tmp-myeditor-backup"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    dead = tmp_path / ".tmp-999999-0123abcd-dataset.parquet"  # a staging file of a process long gone
    dead.write_text("half")
    alive = tmp_path / f".tmp-{os.getppid()}-89abcdef-run.json"  # one a running process is writing
    alive.write_text("busy")
    assert clean_stale_tmp(tmp_path) == [dead]
    assert (mine / "notes.txt").read_text() == "keep me" and alive.exists()


def test_a_filesystem_without_locks_is_one_line_and_leaks_nothing(tmp_path, monkeypatch):
    import errno
    import fcntl
    import os

    import pytest

    from lamini_serve.errors import LaminiError
    from lamini_serve.paths import folder_lock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(LaminiError, match="does not support file locks"):
        with folder_lock(tmp_path / "out"):
            pass
    assert len(os.listdir("/proc/self/fd")) == before


def test_dir_size_skips_named_folders_and_links_below_the_root(tmp_path):
    root = tmp_path / "checkpoints" / "model"  # a skipped name above the root does not count
    (root / "checkpoints").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"x" * 10)
    (root / "checkpoints" / "b.bin").write_bytes(b"x" * 100)
    (root / "link.bin").symlink_to(root / "a.bin")
    assert dir_size(root) == 120
    assert dir_size(root, skip=("checkpoints",)) == 20
    assert dir_size(root, skip=("checkpoints",), follow_links=False) == 10
