"""vLLM's own OpenAI server, run as a managed subprocess per model.

vLLM lives in an environment of its own (`lamini setup vllm`), so it is not
imported here: `VllmEngine` starts ``python -m vllm.entrypoints.openai.api_server``
in that environment on a free local port with a random API key, in its own
process group, its output going to a log file. `start()` returns at once; a
supervisor task waits for ``GET /health`` (state "loading" -> "ready"), then
watches the process: if it dies it is started again ("restarting"), up to a cap
(then "failed").

`request()` (from `Relay`) forwards a request body to the server over one pooled
HTTP client and hands back the server's answer (`Upstream`) unread: the gateway
relays its raw bytes. It never waits on a server that is not ready: it raises
`Unavailable` (503 + Retry-After).

`aclose()` stops the whole process group (SIGTERM, then SIGKILL after a grace
period); an atexit hook does the same for engines a crashing program never closed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from lamini_serve.engines.base import Unavailable
from lamini_serve.engines.relay import RETRY_AFTER_S, Relay
from lamini_serve.models import ModelSpec
from lamini_serve.paths import lamini_home

STATES = ("loading", "ready", "restarting", "failed", "stopped")
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
DEFAULT_MAX_MODEL_LEN_CAP = 8192
STOP_GRACE_S = 15.0
LOAD_TIMEOUT_S = 900.0  # a load that takes longer is treated as a crash

_live: "set[VllmEngine]" = set()  # started and not closed: the atexit hook kills their groups


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_gpu: bool | None = None


def _has_gpu() -> bool:
    global _gpu
    if _gpu is None:
        from lamini_serve.engines.setup import has_nvidia_gpu

        _gpu = has_nvidia_gpu()
    return _gpu


def _model_context(path: str) -> int | None:
    try:
        cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(cfg.get(key), int) and cfg[key] > 0:
            return cfg[key]
    return None


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of the last `flag VALUE` / `flag=VALUE` in args, or None."""
    value = None
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def _log_tail(path: Path, n: int = 3) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    lines = [ln.strip() for ln in lines if ln.strip() and "WARNING" not in ln]
    errors = [ln for ln in lines if _ERROR_LINE.search(ln)] or [ln for ln in lines if " ERROR " in ln]
    return errors[-1][-300:] if errors else ""


_ERROR_LINE = re.compile(r"\b\w*(Error|Exception)\b:|\bERROR\b.*\b\w*(Error|Exception)\b")


class VllmEngine(Relay):
    """One model served by a vLLM OpenAI server in a child process group."""

    kind = "vllm"

    def __init__(
        self,
        name: str,
        spec: ModelSpec,
        python: str,
        *,
        extra_args: Sequence[str] = (),
        kv_cache_gib: float = 1,
        max_model_len: int | None = None,
        dtype: str | None = None,
        enforce_eager: bool | None = None,
        log_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        max_restarts: int = 3,
        load_timeout: float = LOAD_TIMEOUT_S,
    ):
        gpu = _has_gpu()
        self.name, self.spec, self.python = name, spec, str(python)
        self.extra_args = list(extra_args)
        self.kv_cache_gib = kv_cache_gib
        given = _flag_value(self.extra_args, "--max-model-len")
        if given is not None and given.isdigit():
            max_model_len = int(given)  # the extra arguments win (the last flag is vLLM's)
        if max_model_len is None:
            ctx = _model_context(spec.path) if spec.is_local else None
            max_model_len = min(ctx, DEFAULT_MAX_MODEL_LEN_CAP) if ctx else 2048
        self.max_model_len = int(max_model_len)
        # float32 on a CPU: bfloat16 is faster where the CPU has it natively (1.25-2x on the teacher at
        # 8-64 concurrent requests with AMX) but changed the teacher's greedy answers for the worse
        # ("What is the capital of France?" -> "L'Étoile, la Marseillaise, ..."); opt in per model.
        self.dtype = dtype or ("auto" if gpu else "float32")
        self.enforce_eager = (not gpu) if enforce_eager is None else enforce_eager
        self.gpu = gpu
        self.extra_env = dict(env or {})
        self.max_restarts = max_restarts
        self.load_timeout = load_timeout
        log_dir = Path(log_dir) if log_dir is not None else lamini_home() / "logs" / "vllm"
        self.log_path = log_dir / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name) or 'model'}.log"
        self.api_key = secrets.token_urlsafe(24)
        self.port = 0
        self.url = ""
        self.pid: int | None = None
        self.state = "stopped"
        self.restarts = 0
        self.started_at: float | None = None
        self.ready_seconds: float | None = None  # how long the last start took to answer /health
        self._proc: subprocess.Popen | None = None
        self._client = None
        self._supervisor: asyncio.Task | None = None
        self._changed: asyncio.Event | None = None
        self._closing = False
        self._failure = ""

    # ---- the command ------------------------------------------------------
    def command(self, port: int) -> list[str]:
        # The API key travels in the environment (VLLM_API_KEY), not on the command line that `ps` shows.
        # `--generation-config vllm`: the request's parameters and lamini's defaults decide sampling,
        # not the checkpoint's generation_config.json (the in-process engines ignore it too).
        cmd = [self.python, "-m", API_SERVER_MODULE, "--model", self.spec.path, "--served-model-name", self.name,
               "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(self.max_model_len),
               "--dtype", self.dtype, "--generation-config", "vllm", "--disable-uvicorn-access-log"]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        template = self.chat_template()
        if template is not None and _flag_value(self.extra_args, "--chat-template") is None:
            cmd += ["--chat-template", template]
        if self.gpu:
            cmd += ["--kv-cache-memory-bytes", str(int(self.kv_cache_gib * (1 << 30)))]
        return cmd + self.extra_args

    def chat_template(self) -> str | None:
        """The template vLLM renders chat messages with when the checkpoint's own does not
        render its prompt format (a student trained before lamini saved templates), else None."""
        from lamini_serve.chat_templates import has_matching_template, template_for

        if not self.spec.is_local or has_matching_template(self.spec.path, self.spec.prompt_format):
            return None
        return template_for(self.spec.prompt_format)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            VLLM_API_KEY=self.api_key,
            VLLM_CPU_KVCACHE_SPACE=str(max(1, int(round(self.kv_cache_gib)))),
            VLLM_CPU_NUM_OF_RESERVED_CPU="0",
            PYTHONUNBUFFERED="1",
            HF_HUB_OFFLINE=env.get("HF_HUB_OFFLINE", "1" if self.spec.is_local else "0"),
        )
        env.update(self.extra_env)
        return env

    # ---- life cycle ---------------------------------------------------------
    async def start(self) -> None:
        """Launch the server and return at once; `state` turns "ready" when /health answers."""
        if self._supervisor is not None and not self._supervisor.done():
            return
        self._closing = False
        self._changed = asyncio.Event()
        self._open_client()
        self.restarts = 0
        self._failure = ""
        self._launch()
        _live.add(self)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name=f"vllm-{self.name}")

    def _launch(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            log.write(f"\n==== lamini: starting vLLM for {self.name} at {time.strftime('%Y-%m-%d %H:%M:%S')} "
                      f"(restart {self.restarts}) ====\n".encode())
            log.flush()
            self._proc = subprocess.Popen(self.command(self.port), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=self.environment(), start_new_session=True,
                                          preexec_fn=_die_with_parent)
        except OSError as exc:
            self._proc, self.pid = None, None
            self._set("failed")
            self._failure = f"{self.name} could not start vLLM ({self.python}: {exc.strerror or exc})"
            return
        finally:
            log.close()
        self.pid = self._proc.pid
        self.started_at = time.monotonic()
        self._set("loading" if self.restarts == 0 else "restarting")

    def _set(self, state: str) -> None:
        self.state = state
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _supervise(self) -> None:
        ever_ready = False
        while not self._closing and self._proc is not None:
            proc = self._proc
            ready = await self._await_health(proc)
            if self._closing:
                return
            if ready:
                ever_ready = True
                self.ready_seconds = time.monotonic() - (self.started_at or time.monotonic())
                self._set("ready")
                while proc.poll() is None and not self._closing:
                    await asyncio.sleep(0.2)
                if self._closing:
                    return
                if time.monotonic() - (self.started_at or 0) > 600:
                    self.restarts = 0  # a long healthy run forgives earlier crashes
            rc = proc.poll()
            if rc is None:
                why = f"did not answer /health within {self.load_timeout:.0f} s"
            elif rc < 0:
                why = f"was killed by {_signal_name(-rc)}"
            else:
                why = f"exited with status {rc}"
            self._kill_group(proc, signal.SIGKILL)  # what is left of it (engine core, workers)
            await asyncio.to_thread(self._reap, proc, 5)
            tail = _log_tail(self.log_path)
            if not ever_ready or self.restarts >= self.max_restarts:
                self._failure = (f"{self.name}: vLLM {why}" + (" before it was ever ready" if not ever_ready else
                                 f" after {self.restarts} restarts") + (f" ({tail})" if tail else "")
                                 + f"; see {self.log_path}")
                self._set("failed")
                return
            self.restarts += 1
            self._set("restarting")
            await asyncio.sleep(min(2.0 * self.restarts, 10))
            if self._closing:
                return
            self._launch()
            if self.state == "failed":
                return

    async def _await_health(self, proc: subprocess.Popen) -> bool:
        deadline = time.monotonic() + self.load_timeout
        url = self.url + "/health"
        while not self._closing and time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            got = await self._get(url)
            if got is not None and got[0] == 200:
                return True
            await asyncio.sleep(0.5)
        return False

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the server answers; `Unavailable` if it failed or is not ready in `timeout` s."""
        if self._changed is None:
            raise Unavailable(f"{self.name} is not started", retry_after=RETRY_AFTER_S)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._notice_death()
        while self.state != "ready":
            if self.state in ("failed", "stopped"):
                raise Unavailable(self._failure or f"{self.name} is {self.state}")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise Unavailable(f"{self.name} is still {self.state} after {timeout:.0f} s; see {self.log_path}",
                                  retry_after=RETRY_AFTER_S)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=left)

    def _notice_death(self) -> bool:
        """True (and state "restarting") when a "ready" server died since the watchdog last looked."""
        if self.state == "ready" and self._proc is not None and self._proc.poll() is not None:
            self._set("restarting")
            return True
        return False

    # ---- requests -----------------------------------------------------------
    def _unavailable(self) -> Unavailable:
        if self.state == "failed":
            return Unavailable(self._failure or f"{self.name} failed; see {self.log_path}")
        if self.state == "stopped":
            return Unavailable(f"{self.name} is stopped")
        return Unavailable(f"{self.name} is {self.state}", retry_after=RETRY_AFTER_S)

    def prepare(self, body: dict[str, Any], path: str = "/v1/chat/completions") -> dict[str, Any]:
        """The body vLLM gets: the served name as `model`, plus what the model's prompt format
        implies unless the client said otherwise (special tokens added as lamini adds them;
        for generation, the format's stop strings as well)."""
        body = dict(body)
        body["model"] = self.name
        stops = self.spec.stop_strings
        if stops and path.endswith("chat/completions"):  # a raw completion stops where the client says
            given = body.get("stop")
            given = [given] if isinstance(given, str) else list(given or [])
            body["stop"] = list(dict.fromkeys([*given, *stops]))
        body.setdefault("add_special_tokens", self.spec.add_special_tokens)
        return body

    async def request(self, path: str, body: dict[str, Any]):
        if self.state != "ready" or self._proc is None:
            raise self._unavailable()
        if self._notice_death():
            raise Unavailable(f"{self.name} stopped unexpectedly and is restarting", retry_after=RETRY_AFTER_S)
        return await super().request(path, body)

    def lost(self, exc: BaseException) -> Unavailable:
        """As Relay's, and the server is marked as restarting when it died."""
        self._notice_death()
        return super().lost(exc)

    # ---- stopping -----------------------------------------------------------
    @staticmethod
    def _kill_group(proc: subprocess.Popen | None, sig: int) -> None:
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # start_new_session: the group id is the leader's pid

    @staticmethod
    def _reap(proc: subprocess.Popen, timeout: float) -> bool:
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill_now(self) -> None:
        """Best effort, synchronous: SIGKILL the whole group (atexit, crashes)."""
        self._closing = True
        self._kill_group(self._proc, signal.SIGKILL)

    async def aclose(self) -> None:
        """Stop the server and everything it started; close the connection pool."""
        self._closing = True
        sup, self._supervisor = self._supervisor, None
        if sup is not None and not sup.done():
            sup.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sup
        proc = self._proc
        if proc is not None:
            self._kill_group(proc, signal.SIGTERM)
            if not await asyncio.to_thread(self._reap, proc, STOP_GRACE_S):
                self._kill_group(proc, signal.SIGKILL)
                await asyncio.to_thread(self._reap, proc, 5)
            # children that outlived their leader (the engine core, workers)
            if _group_alive(proc.pid):
                await asyncio.sleep(0.5)
                self._kill_group(proc, signal.SIGKILL)
        await self._close_client()
        self._set("stopped")
        _live.discard(self)

    def __repr__(self) -> str:
        return f"VllmEngine({self.name!r}, state={self.state!r}, url={self.url!r}, pid={self.pid})"


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the gateway dies, even by SIGKILL (Linux
    PR_SET_PDEATHSIG), so a killed `lamini serve` leaves no vLLM server holding memory.
    vLLM's engine core watches its own parent and goes with it."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@atexit.register
def _kill_all() -> None:
    for eng in list(_live):
        with contextlib.suppress(Exception):
            eng.kill_now()
