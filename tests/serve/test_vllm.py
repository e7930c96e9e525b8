"""VllmEngine: vLLM's own OpenAI server as a managed subprocess.

The fast tests run a fake `vllm.entrypoints.openai.api_server` (a stdlib HTTP server
with a child process) under this Python: life cycle, restarts, Unavailable, process
groups, `lamini setup vllm`, `choose`. The slow ones need `lamini setup vllm`: two servers are started once for the module (each start is 30-60 s on 2 cores): the
embedded teacher (ChatML) and a tiny decoder-only llama student in the alpaca format
carrying lamini's alpaca chat template. Both must answer with the same greedy text as
the in-process torch engine, by chat and by completion; a killed server must turn into
an immediate `Unavailable` and come back by itself; closing leaves no process behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from lamini_serve.chat_templates import template_for
from lamini_serve.checkpoint import write_metadata
from lamini_serve.engines.base import Unavailable
from lamini_serve.generation import SamplingParams
from lamini_serve.models import Family, ModelSpec
from lamini_serve.prompts import PromptFormat
from tests.conftest import REAL_HOME

MAX_TOKENS = 24
CONVERSATIONS = [
    [{"role": "user", "content": "Give three tips for staying healthy."}],
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."},
     {"role": "user", "content": "Write a short poem about the sea."}],
]
PROMPT = "Here is a list of tasks:\n1. Translate 'good morning' into Spanish.\n2."


class Loop:
    """An event loop in a thread of its own, so module-scoped engines outlive single tests."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 600):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def vllm_py():
    from lamini_serve.engines.setup import vllm_python

    py = vllm_python(REAL_HOME)
    if py is None:
        pytest.skip(f"no vLLM environment (none registered or set up under {REAL_HOME}); "
                    f"run `lamini setup vllm` or set LAMINI_VLLM_PYTHON")
    return py


@pytest.fixture(scope="module")
def loop():
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def alpaca_student(tiny_models, tmp_path_factory):
    """The tiny llama as `lamini train` saves an alpaca student: lamini.json + alpaca template.

    tiny_models["llama"] has head_dim 16, which vLLM's CPU attention refuses (it takes 32,
    64, 80...): the same model with 2 heads of 32 (random weights, wide init, seed 0).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from lamini_serve.chat_templates import set_tokenizer_template
    from lamini_serve.testing import INIT_STD

    out = tmp_path_factory.mktemp("student") / "llama-alpaca"
    shutil.copytree(tiny_models["llama"], out)
    cfg = json.loads((out / "config.json").read_text())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
        bos_token_id=cfg["bos_token_id"], eos_token_id=cfg["eos_token_id"], pad_token_id=cfg["pad_token_id"],
        tie_word_embeddings=False, initializer_range=INIT_STD))
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = cfg["eos_token_id"], cfg["pad_token_id"]
    for f in out.glob("*.safetensors"):
        f.unlink()
    model.save_pretrained(out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    tok = AutoTokenizer.from_pretrained(out)
    set_tokenizer_template(tok, PromptFormat.ALPACA)
    tok.save_pretrained(out)
    write_metadata(out, Family.CAUSAL, PromptFormat.ALPACA, role="test")
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == template_for("alpaca")
    return out


@pytest.fixture(scope="module")
def engines(vllm_py, loop, teacher_path, alpaca_student, tmp_path_factory):
    from lamini_serve.engines.vllm import VllmEngine

    logs = tmp_path_factory.mktemp("vllm-logs")
    specs = {"teacher": ModelSpec.resolve(teacher_path), "student": ModelSpec.resolve(alpaca_student)}
    assert specs["student"].prompt_format is PromptFormat.ALPACA
    engs = {k: VllmEngine(k, s, vllm_py, kv_cache_gib=1, enforce_eager=True, log_dir=logs)
            for k, s in specs.items()}

    async def start_all():
        t0 = time.monotonic()
        for e in engs.values():
            await e.start()
            assert e.state == "loading"  # start() does not wait for the model
        assert time.monotonic() - t0 < 5
        await asyncio.gather(*(e.wait_ready(600) for e in engs.values()))

    try:
        loop.run(start_all(), timeout=700)
        for e in engs.values():
            print(f"vLLM {e.name}: ready in {e.ready_seconds:.1f} s (pid {e.pid}, {e.url})")
        yield engs
    finally:
        for e in engs.values():
            loop.run(e.aclose(), timeout=60)


@pytest.fixture(scope="module")
def torch_engines(engines):
    from lamini_serve.engines.torch_engine import TorchEngine

    return {k: TorchEngine(e.spec, device="cpu", dtype="float32") for k, e in engines.items()}


GREEDY = SamplingParams(temperature=0, max_new_tokens=MAX_TOKENS, repetition_penalty=1.0)


async def _post(engine, path, body):
    resp = await engine.request(path, body)
    try:
        raw = b"".join([chunk async for chunk in resp.aiter_raw()])
    finally:
        await resp.aclose()
    return resp.status_code, raw


def _json(loop, engine, path, body):
    status, raw = loop.run(_post(engine, path, body), timeout=300)
    assert status == 200, raw[:500]
    return json.loads(raw)


def _greedy_body(**kw):
    return {"max_tokens": MAX_TOKENS, "temperature": 0, "repetition_penalty": 1.0, **kw}


def _assert_readable(text: str):
    assert text.strip()
    for bad in ("\u0120", "\u010a", "\ufffd", "<|im_start|>", "<|im_end|>"):
        assert bad not in text, (bad, text)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["teacher", "student"])
def test_chat_prompt_ids_match_lamini(engines, torch_engines, loop, which):
    """vLLM renders the chat through the checkpoint's template: the same token ids as lamini's renderer."""
    eng, tor = engines[which], torch_engines[which]
    for conv in CONVERSATIONS:
        got = _json(loop, eng, "/tokenize", {"messages": conv, "add_generation_prompt": True})["tokens"]
        want = tor.encode([conv])["input_ids"][0].tolist()
        assert got == want, (which, conv)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["teacher", "student"])
def test_chat_greedy_text_equals_torch(engines, torch_engines, loop, which):
    eng, tor = engines[which], torch_engines[which]
    for conv in CONVERSATIONS:
        data = _json(loop, eng, "/v1/chat/completions", _greedy_body(messages=conv))
        text = data["choices"][0]["message"]["content"]
        want = tor.generate([conv], GREEDY)[0].text
        if which == "teacher":
            _assert_readable(text)
        assert text.strip() == want.strip(), (which, conv)
        assert data["model"] == which


@pytest.mark.slow
@pytest.mark.parametrize("which", ["teacher", "student"])
def test_completion_greedy_text_equals_torch(engines, torch_engines, loop, which):
    eng, tor = engines[which], torch_engines[which]
    for prompt in (PROMPT, tor.prompt_text([{"role": "user", "content": "Name three colours."}])):
        data = _json(loop, eng, "/v1/completions", _greedy_body(prompt=prompt))
        text = data["choices"][0]["text"]
        want = tor.complete([prompt], GREEDY)[0].text
        if which == "teacher":
            _assert_readable(text)
        assert text.strip() == want.strip(), (which, prompt)


@pytest.mark.slow
def test_streamed_chat_is_raw_sse_and_equals_the_whole_answer(engines, loop):
    eng = engines["teacher"]
    conv = CONVERSATIONS[0]
    whole = _json(loop, eng, "/v1/chat/completions", _greedy_body(messages=conv))["choices"][0]["message"]["content"]
    status, raw = loop.run(_post(eng, "/v1/chat/completions", _greedy_body(messages=conv, stream=True)))
    assert status == 200
    events = [ln[len(b"data: "):] for ln in raw.split(b"\n") if ln.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    pieces = [json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
              if json.loads(e)["choices"]]
    assert "".join(pieces) == whole


@pytest.mark.slow
def test_requests_are_refused_before_start_and_errors_pass_through(engines, loop, vllm_py, alpaca_student, tmp_path):
    from lamini_serve.engines.vllm import VllmEngine

    idle = VllmEngine("idle", ModelSpec.resolve(alpaca_student), vllm_py, log_dir=tmp_path)
    with pytest.raises(Unavailable):
        loop.run(idle.request("/v1/completions", {"prompt": "x"}))
    # vLLM's own error (an over-long prompt) comes back as its status and body, untouched
    status, raw = loop.run(_post(engines["student"], "/v1/completions",
                                 {"prompt": "sea " * 2000, "max_tokens": 4}))
    assert status == 400 and b"error" in raw


def _group_members(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(d.name))
    return out


@pytest.mark.slow
def test_a_killed_server_is_unavailable_at_once_then_restarts(engines, loop):
    eng = engines["student"]
    old_pid = eng.pid
    assert _group_members(old_pid)
    os.kill(old_pid, signal.SIGKILL)
    time.sleep(0.2)
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as info:
        loop.run(eng.request("/v1/completions", _greedy_body(prompt=PROMPT)), timeout=30)
    assert time.monotonic() - t0 < 10  # refused, not hung
    assert info.value.retry_after
    assert eng.state in ("restarting", "loading")
    t0 = time.monotonic()
    loop.run(eng.wait_ready(600), timeout=620)
    print(f"restart ready in {time.monotonic() - t0:.1f} s")
    assert eng.pid != old_pid and eng.restarts == 1
    assert not _group_members(old_pid)  # the dead server's engine core went with it
    data = _json(loop, eng, "/v1/completions", _greedy_body(prompt=PROMPT))
    assert data["choices"][0]["text"]


@pytest.mark.slow
def test_aclose_leaves_no_process_behind(engines, loop):
    pids = {k: e.pid for k, e in engines.items()}
    for k, e in engines.items():
        assert _group_members(pids[k]), k
    t0 = time.monotonic()
    for e in engines.values():
        loop.run(e.aclose(), timeout=60)
    print(f"aclose took {time.monotonic() - t0:.1f} s for both")
    for k, e in engines.items():
        assert e.state == "stopped"
        assert not _group_members(pids[k]), k
        with pytest.raises(ProcessLookupError):
            os.kill(pids[k], 0)
        with pytest.raises(Unavailable):
            loop.run(e.request("/v1/completions", {"prompt": "x"}))


# ---- fast: a fake vLLM server under this Python -----------------------------------
FAKE_SERVER = r'''
import argparse, json, os, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
for a in ("--model", "--served-model-name", "--host", "--api-key", "--max-model-len", "--dtype"):
    p.add_argument(a)
p.add_argument("--port", type=int)
args, _ = p.parse_known_args()
if os.environ.get("FAKE_VLLM_FAIL"):
    print("INFO loading", flush=True)
    print("ValueError: fake failure to load", flush=True)
    sys.exit(3)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # like vLLM's engine core
time.sleep(float(os.environ.get("FAKE_VLLM_DELAY", "1")))


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, status, data=b""):
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200 if self.path == "/health" else 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != "Bearer " + (args.api_key or os.environ["VLLM_API_KEY"]):
            return self._send(401, b'{"error": "bad key"}')
        if body.get("prompt") == "die" and body.get("stream"):  # dies in the middle of a streamed answer
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            event = b'data: {"choices": [{"index": 0, "text": "half"}]}\n\n'
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
            time.sleep(0.3)
            os._exit(1)
        env = {k: os.environ.get(k) for k in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_NUM_OF_RESERVED_CPU")}
        self._send(200, json.dumps({"path": self.path, "body": body, "argv": sys.argv[1:], "env": env}).encode())


ThreadingHTTPServer((args.host, args.port), H).serve_forever()
'''


@pytest.fixture
def fake_vllm_python(tmp_path):
    """An executable that runs this Python with a fake `vllm` package on its path."""
    import sys

    pkg = tmp_path / "fake" / "vllm"
    (pkg / "entrypoints" / "openai").mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "0.0.fake"\n')
    (pkg / "entrypoints" / "__init__.py").write_text("")
    (pkg / "entrypoints" / "openai" / "__init__.py").write_text("")
    (pkg / "entrypoints" / "openai" / "api_server.py").write_text(FAKE_SERVER)
    py = tmp_path / "fakepy"
    py.write_text(f'#!/bin/sh\nPYTHONPATH="{pkg.parent}" exec "{sys.executable}" "$@"\n')
    py.chmod(0o755)
    return str(py)


def _fake_spec(tiny_models, fmt="alpaca"):
    return ModelSpec.resolve(tiny_models["gpt2"], prompt_format=fmt)


def test_fake_server_life_cycle_restart_cap_and_close(tiny_models, fake_vllm_python, tmp_path):
    from lamini_serve.engines.vllm import VllmEngine

    eng = VllmEngine("s", _fake_spec(tiny_models), fake_vllm_python, log_dir=tmp_path / "logs", max_restarts=1,
                     extra_args=["--seed", "1"])

    async def post(body):
        resp = await eng.request("/v1/completions", body)
        try:
            return json.loads(b"".join([c async for c in resp.aiter_raw()]))
        finally:
            await resp.aclose()

    async def scenario():
        await eng.start()
        assert eng.state == "loading" and eng.url.startswith("http://127.0.0.1:") and eng.pid
        with pytest.raises(Unavailable) as info:
            await post({"prompt": "x"})
        assert info.value.retry_after == 5 and "loading" in str(info.value)
        await eng.wait_ready(60)
        got = await post({"prompt": "x", "model": "whatever", "stop": "END"})
        body, argv = got["body"], got["argv"]
        assert body["model"] == "s" and body["stop"] == "END"  # a raw completion stops where the client says
        assert body["add_special_tokens"] is True
        chat = eng.prepare({"messages": [], "stop": "END"}, "/v1/chat/completions")
        assert chat["stop"] == ["END", "### Instruction:"]  # a chat answer ends where the format's next turn starts
        assert eng.api_key not in " ".join(argv) and "--api-key" not in argv  # the key is not in `ps`
        assert argv[argv.index("--generation-config") + 1] == "vllm"
        assert argv[argv.index("--served-model-name") + 1] == "s" and argv[-2:] == ["--seed", "1"]
        assert argv[argv.index("--dtype") + 1] == eng.dtype and argv[argv.index("--max-model-len") + 1] == "512"
        assert ("--enforce-eager" in argv) == eng.enforce_eager
        assert got["env"] == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
        assert len(_group_members(eng.pid)) >= 2  # the server and its child

        # killed: refused at once, restarted, the dead one's child reaped
        first = eng.pid
        os.kill(first, signal.SIGKILL)
        while eng._proc.poll() is None:
            await asyncio.sleep(0.02)
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            await post({"prompt": "x"})
        assert time.monotonic() - t0 < 2
        await eng.wait_ready(60)
        assert eng.pid != first and eng.restarts == 1 and not _group_members(first)
        assert (await post({"prompt": "y"}))["body"]["prompt"] == "y"

        # killed past the cap: failed, and the error names the log
        second = eng.pid
        os.kill(second, signal.SIGKILL)
        while eng._proc.poll() is None:  # the kill has landed
            await asyncio.sleep(0.02)
        with pytest.raises(Unavailable) as info:
            await eng.wait_ready(30)
        assert eng.state == "failed" and str(eng.log_path) in str(info.value) and "SIGKILL" in str(info.value)
        with pytest.raises(Unavailable) as info:
            await post({"prompt": "x"})
        assert str(eng.log_path) in str(info.value) and not _group_members(second)

        # a fresh start, then close: nothing left
        await eng.start()
        await eng.wait_ready(60)
        third = eng.pid
        await eng.aclose()
        assert eng.state == "stopped" and not _group_members(third)
        with pytest.raises(Unavailable):
            await post({"prompt": "x"})

    asyncio.run(asyncio.wait_for(scenario(), 240))
    assert "starting vLLM for s" in eng.log_path.read_text()


def test_a_server_that_cannot_load_fails_with_its_error(tiny_models, fake_vllm_python, tmp_path):
    from lamini_serve.engines.vllm import VllmEngine

    eng = VllmEngine("bad", _fake_spec(tiny_models), fake_vllm_python, log_dir=tmp_path, env={"FAKE_VLLM_FAIL": "1"})

    async def scenario():
        await eng.start()
        try:
            with pytest.raises(Unavailable) as info:
                await eng.wait_ready(60)
        finally:
            await eng.aclose()
        return str(info.value)

    msg = asyncio.run(scenario())
    assert "before it was ever ready" in msg and "ValueError: fake failure to load" in msg and str(eng.log_path) in msg
    assert eng.restarts == 0  # a model that cannot load is not retried in a loop


def test_a_missing_python_fails_in_one_line(tiny_models, tmp_path):
    from lamini_serve.engines.vllm import VllmEngine

    eng = VllmEngine("m", _fake_spec(tiny_models), str(tmp_path / "no-python"), log_dir=tmp_path)

    async def scenario():
        await eng.start()
        with pytest.raises(Unavailable) as info:
            await eng.wait_ready(5)
        await eng.aclose()
        return str(info.value)

    assert "could not start vLLM" in asyncio.run(scenario())


def test_choose_an_engine(tiny_models, tmp_path):
    from types import SimpleNamespace

    from lamini_serve.engines.setup import choose, has_nvidia_gpu

    onnx = SimpleNamespace(runtime="onnx", family=Family.CAUSAL, is_local=True, path=str(tmp_path))
    assert choose(onnx, "/py")[0] == "onnx"
    t5 = ModelSpec.resolve(tiny_models["t5"])
    assert choose(t5, "/py") == ("torch", "vLLM serves no encoder-decoder models")
    hub = SimpleNamespace(runtime="torch", family=Family.CAUSAL, is_local=False, path="gpt2")
    assert choose(hub, "/py")[0] == "vllm"
    kind, why = choose(hub, None)
    assert kind == "torch" and "lamini setup vllm" in why
    # head size 16 (the tiny test models): vLLM's CPU attention refuses it
    if not has_nvidia_gpu():
        kind, why = choose(ModelSpec.resolve(tiny_models["llama"]), "/py")
        assert kind == "torch" and "16" in why


def test_vllm_python_finds_env_var_registration_and_stamp(tmp_path, monkeypatch, fake_vllm_python):
    from lamini_serve.engines.setup import ENV_VAR, env_dir, registry_path, vllm_python
    from lamini_serve.errors import LaminiError

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert vllm_python() is None
    env = env_dir()
    (env / "bin").mkdir(parents=True)
    shutil.copy(fake_vllm_python, env / "bin" / "python")
    assert vllm_python() is None  # no stamp: an unfinished setup
    (env / ".complete").write_text("{}")
    assert vllm_python() == str(env / "bin" / "python")
    registry_path().write_text(json.dumps({"python": fake_vllm_python}))
    assert vllm_python() == fake_vllm_python
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(LaminiError, match=ENV_VAR):
        vllm_python()


def test_setup_vllm_stamps_an_existing_env_and_registers_a_python(tmp_path, monkeypatch, fake_vllm_python):
    from click.testing import CliRunner

    from lamini_serve.cli import cli
    from lamini_serve.engines import setup as setup_mod

    monkeypatch.delenv(setup_mod.ENV_VAR, raising=False)
    monkeypatch.setattr(setup_mod, "_run_streamed", lambda *a, **k: pytest.fail("must not install"))
    env = setup_mod.env_dir()
    (env / "bin").mkdir(parents=True)
    shutil.copy(fake_vllm_python, env / "bin" / "python")
    runner = CliRunner()
    r = runner.invoke(cli, ["setup", "vllm"])
    assert r.exit_code == 0, r.output
    assert "stamped it, nothing reinstalled" in r.output
    stamp = json.loads((env / ".complete").read_text())
    assert stamp["vllm_version"] == "0.0.fake" and stamp["how"] == "validated"
    r = runner.invoke(cli, ["setup", "vllm"])
    assert r.exit_code == 0 and "nothing to do" in r.output

    r = runner.invoke(cli, ["setup", "vllm", "--python", fake_vllm_python])
    assert r.exit_code == 0, r.output
    assert json.loads(setup_mod.registry_path().read_text())["python"] == fake_vllm_python
    import sys

    r = runner.invoke(cli, ["setup", "vllm", "--python", sys.executable])  # no vllm there
    assert r.exit_code != 0 and "cannot import vllm" in r.output and "Traceback" not in r.output


_FORGETFUL = r"""
import asyncio, sys
from lamini_serve.engines.vllm import VllmEngine
from lamini_serve.models import ModelSpec

async def main():
    e = VllmEngine("x", ModelSpec.resolve(sys.argv[2], prompt_format="alpaca"), sys.argv[1], log_dir=sys.argv[3])
    await e.start()
    await e.wait_ready(60)
    print(e.pid, flush=True)

asyncio.run(main())  # never closed: the atexit hook must stop the server's whole group
"""


def test_a_program_that_never_closes_leaves_no_server_behind(tiny_models, fake_vllm_python, tmp_path):
    import subprocess
    import sys

    from tests.conftest import lamini_root

    proc = subprocess.run([sys.executable, "-c", _FORGETFUL, fake_vllm_python, str(tiny_models["gpt2"]), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=lamini_root())
    assert proc.returncode == 0, proc.stderr[-2000:]
    pid = int(proc.stdout.split()[-1])
    deadline = time.monotonic() + 5
    while _group_members(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_members(pid)


def test_the_gateway_relays_a_mid_stream_death_and_takes_vllm_with_it(serve, tiny_models, fake_vllm_python):
    """Through `lamini serve`: a vLLM server that dies mid-answer ends the stream with an
    error event and [DONE] (not a broken connection); a gateway killed by SIGKILL leaves
    no vLLM server behind (PR_SET_PDEATHSIG)."""
    import httpx
    import psutil

    served = serve(f"s={tiny_models['gpt2']}", "--engine", "s=vllm", env={"LAMINI_VLLM_PYTHON": fake_vllm_python},
                   timeout=120)
    def command(p) -> str:  # "" for a child that is gone or a zombie not yet reaped
        try:
            return " ".join(p.cmdline())
        except psutil.Error:
            return ""

    kids = psutil.Process(served.proc.pid).children(recursive=True)
    server = next(k for k in kids if "api_server" in command(k) or "vllm" in command(k))
    r = httpx.post(served.base_url + "/completions", json={"model": "s", "prompt": "x"}, timeout=30)
    assert r.status_code == 200 and r.json()["body"]["prompt"] == "x"

    with httpx.stream("POST", served.base_url + "/completions", json={"model": "s", "prompt": "die", "stream": True},
                      timeout=30) as r:
        text = "".join(r.iter_text())
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["text"] == "half"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "service_unavailable" and "stopped answering" in error["message"]
    assert events[-1] == "[DONE]"

    # the dead server is replaced; then the gateway is killed outright
    def replacements():
        return [k for k in psutil.Process(served.proc.pid).children(recursive=True)
                if k.pid != server.pid and "vllm" in command(k)]

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (httpx.get(served.url + "/health", timeout=5).status_code != 200
                                           or not replacements()):
        time.sleep(0.2)
    assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
    kids = replacements()
    assert kids
    served.proc.kill()
    served.proc.wait(10)
    gone, alive = psutil.wait_procs(kids, timeout=10)
    assert not alive, [k.cmdline() for k in alive]
