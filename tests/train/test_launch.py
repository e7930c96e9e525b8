"""The distributed and parallel paths, on the CPU: 2-process data parallel (gloo), one student per device."""

import json
import sys

import pytest

from tests.conftest import run_lamini
from tests.train.test_train import PAIRS

pytestmark = pytest.mark.slow


def _recipe_file(tmp_path, tiny_tokenizer, names=("s",), **defaults):
    from lamini_serve.testing import make_tiny_model

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS * 2))
    base = make_tiny_model("gpt2", tmp_path / "base", tokenizer=tiny_tokenizer, wide_init=False)
    d = {"effective_batch_size": 8, "per_device_batch_size": 4, "max_length": 64, "logging_steps": 1,
         "eval_share": 0.0, "learning_rate": 3e-3, **defaults}
    students = "\n".join(f"  - {{name: {n}, base: {base}}}" for n in names)
    p = tmp_path / "recipe.yaml"
    p.write_text(f"dataset: {data}\noutput: {tmp_path / 'herd'}\ndefaults: {json.dumps(d)}\nstudents:\n{students}\n")
    return p


def test_two_process_data_parallel_with_gloo(tmp_path, tiny_tokenizer):
    recipe = _recipe_file(tmp_path, tiny_tokenizer)
    import socket

    with socket.socket() as sock:  # a free port: a fixed one may still be held by an earlier run
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = f"{sys.executable} -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port {port}"
    r = run_lamini("train", str(recipe), "--max-steps", "4", "--launch", launch, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.loads((tmp_path / "herd" / "s" / "lamini.json").read_text())
    # 4 per device x 2 processes x 1 accumulation step = the effective batch of 8
    assert card["training"]["effective_batch"] == 8 and card["training"]["steps"] == 4
    assert card["training"]["answer_only_logits"] is True  # the loss hook works through DDP's wrapper
    assert (tmp_path / "herd" / "s" / "model.safetensors").is_file()


def test_one_student_per_device_in_parallel(tmp_path, tiny_tokenizer):
    recipe = _recipe_file(tmp_path, tiny_tokenizer, names=("a", "b", "c"))
    r = run_lamini("train", str(recipe), "--max-steps", "2", "--parallel-students", "--devices", "cpu,cpu", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for n in "abc":
        assert (tmp_path / "herd" / n / "lamini.json").is_file()
        assert "started on device cpu" in r.stderr
    herd = json.loads((tmp_path / "herd" / "herd.json").read_text())
    assert [s["name"] for s in herd["students"]] == ["a", "b", "c"]  # each child saw the others' folders
