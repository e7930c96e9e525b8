"""Shared fixtures: tiny random-weight checkpoints, and the real embedded teacher.

Every test runs with LAMINI_HOME pointing at a fresh temporary folder, so nothing
leaks between tests. The embedded teacher is the exception: it is pulled once
into the real cache (the LAMINI_HOME the test run started with, default
~/.cache/lamini) and reused by every run after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

# Tests never reach for a model hub; huggingface_hub reads this once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"

from lamini_serve.paths import lamini_home  # noqa: E402
from lamini_serve.testing.procs import Lines  # noqa: E402

REAL_HOME = lamini_home()  # read once, before any test changes LAMINI_HOME
TF5_REQUIREMENTS = ["transformers==5.19.0", "jinja2"]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "lamini-home"
    monkeypatch.setenv("LAMINI_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from lamini_serve.testing import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_tokenizer):
    """{"llama": path, "gpt2": path, "t5": path}: tiny checkpoints with lamini.json."""
    from lamini_serve.testing import make_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {k: make_tiny_model(k, root / k, tokenizer=tiny_tokenizer) for k in ("llama", "gpt2", "t5")}


@pytest.fixture(scope="session")
def teacher_path():
    """The embedded teacher, pulled once into the real LAMINI_HOME."""
    from lamini_serve.teacher.embedded import pull_teacher

    old = os.environ.get("LAMINI_HOME")
    os.environ["LAMINI_HOME"] = str(REAL_HOME)
    try:
        return pull_teacher().path
    finally:
        if old is None:
            os.environ.pop("LAMINI_HOME", None)
        else:
            os.environ["LAMINI_HOME"] = old


@pytest.fixture
def teacher_home(teacher_path, monkeypatch):
    """Point LAMINI_HOME at the cache that holds the pulled teacher (for `embedded`)."""
    monkeypatch.setenv("LAMINI_HOME", str(REAL_HOME))
    return REAL_HOME


@pytest.fixture(scope="session")
def tf5_python():
    """A Python with transformers 5.19 (vLLM's stack), made once in the real cache.

    Set LAMINI_TF5_PYTHON to use an existing one. Otherwise the vLLM environment
    (`lamini setup vllm`, transformers 5.19) serves when there is one.
    """
    given = os.environ.get("LAMINI_TF5_PYTHON")
    if given:
        return given
    from lamini_serve.engines.setup import vllm_python

    try:
        found = vllm_python(REAL_HOME)
    except Exception:  # a LAMINI_VLLM_PYTHON that points nowhere: build our own below
        found = None
    if found:
        return found
    env = REAL_HOME / "test-envs" / "transformers-5.19"
    py = env / "bin" / "python"
    stamp = env / ".complete"
    if not stamp.is_file():
        try:
            venv.create(env, with_pip=True, clear=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", *TF5_REQUIREMENTS],
                           check=True, capture_output=True, text=True, timeout=900)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            pytest.skip(f"could not build a transformers 5.19 venv at {env}: {detail.strip()[-300:]}")
        stamp.write_text("ok\n")
    return str(py)


def run_lamini(*args: str, env: dict | None = None, timeout: float = 600, input: str | None = None):
    """Run the real `lamini` command in a subprocess, as a user would."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "lamini_serve", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, input=input,
    )


def lamini_root() -> Path:
    return Path(__file__).resolve().parents[1]


# -- real `lamini serve` processes ------------------------------------------------------
# `serve(*args, env=...)` starts `python -m lamini_serve serve ARGS --port 0` in its own
# process group, reads the one listening line from its standard output, waits for
# /health and returns a `Served` (url, base_url, process, log). Every process it
# started is terminated (its whole group) when the session ends.


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT
    base_url: str  # url + /v1
    proc: subprocess.Popen
    log: Path
    lines: list

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture(scope="session")
def serve(tmp_path_factory):
    home = tmp_path_factory.mktemp("serve-home")
    started: list[Served] = []

    def start(*args: str, env: dict | None = None, timeout: float = 300, health: bool = True) -> Served:
        import httpx

        log = home / f"serve-{len(started)}.log"
        full_env = dict(os.environ, LAMINI_HOME=str(home), HF_HUB_OFFLINE="1")
        full_env.pop("LAMINI_VLLM_PYTHON", None)
        full_env.update(env or {})
        proc = subprocess.Popen([sys.executable, "-m", "lamini_serve", "serve", *args, "--port", "0"],
                                stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=full_env,
                                start_new_session=True)
        lines = Lines(proc.stdout)
        served = Served("", "", proc, log, lines.seen)
        started.append(served)
        deadline = time.monotonic() + timeout
        try:
            served.base_url = lines.wait_for("lamini serve: listening on ", timeout)
        except TimeoutError:
            raise AssertionError(f"lamini serve printed no listening line in {timeout}s:\n{served.stderr()[-3000:]}")
        except EOFError:
            proc.wait(10)
            raise AssertionError(f"lamini serve exited ({proc.returncode}):\n{served.stderr()[-3000:]}")
        served.url = served.base_url.removesuffix("/v1")
        if health:
            while time.monotonic() < deadline:
                try:
                    if httpx.get(served.url + "/health", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            else:
                raise AssertionError(f"/health never answered 200:\n{served.stderr()[-3000:]}")
        return served

    yield start
    for served in started:
        try:
            served.stop(timeout=15)
        except ProcessLookupError:
            pass
