"""Fixtures for the server's tests: tiny ONNX exports, and real `lamini serve` processes.

`serve(*args, env=...)` starts `python -m lamini_serve serve ARGS --port 0` in its own
process group, reads the one listening line from its standard output, waits for
/health and returns a `Served` (url, base_url, process, log). Every process it
started is terminated (its whole group) when the session ends.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

EXPORT_KINDS = ("llama", "gpt2", "t5")


def export_tiny(tiny_models, root: Path, kinds=EXPORT_KINDS) -> dict[str, Path]:
    """{kind: fp32 ONNX export folder} (fp32: greedy tokens match PyTorch's exactly)."""
    from lamini_serve.export.exporter import ExportOptions, export_model

    for kind in kinds:
        if not (root / kind).is_dir():
            export_model(str(tiny_models[kind]), root / kind, ExportOptions(quantize="none"), report_prompts=0)
    return {kind: root / kind for kind in kinds}


@pytest.fixture(scope="session")
def tiny_exports(tiny_models, tmp_path_factory):
    return export_tiny(tiny_models, tmp_path_factory.mktemp("serve-exports"), ("llama", "t5"))


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
        lines: queue.Queue = queue.Queue()
        seen: list[str] = []

        def read():
            for line in proc.stdout:
                seen.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        served = Served("", "", proc, log, seen)
        started.append(served)
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"lamini serve printed no listening line in {timeout}s:\n{served.stderr()[-3000:]}")
            if line is None:
                proc.wait(10)
                raise AssertionError(f"lamini serve exited ({proc.returncode}):\n{served.stderr()[-3000:]}")
            if line.startswith("lamini serve: listening on "):
                served.base_url = line.split(" on ", 1)[1].strip()
                served.url = served.base_url.removesuffix("/v1")
                break
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
