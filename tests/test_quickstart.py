"""`lamini quickstart --tiny --yes --no-ui`: the whole pipeline on the embedded teacher, end to end,
then a rerun that finds every stage done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lamini_serve.testing.procs import Lines
from tests.conftest import run_lamini


def _interrupt_in(stage: str, out, after: float = 5.0) -> int:
    """Start the tiny quickstart, Ctrl-C it `after` seconds into `stage`; its exit status."""
    proc = subprocess.Popen([sys.executable, "-m", "lamini_serve", "quickstart", "--tiny", "--yes", "--no-ui",
                             "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"), start_new_session=True,
                            # a background job (nohup ... &) ignores SIGINT, and so would its children
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = Lines(proc.stderr)
    lines.wait_for(f"lamini quickstart: {stage} ...", 600)
    time.sleep(after)
    os.killpg(proc.pid, signal.SIGINT)
    return proc.wait(120)


@pytest.mark.slow
def test_tiny_quickstart_runs_every_stage_and_summarizes(teacher_home, tmp_path):
    out = tmp_path / "qs"
    assert _interrupt_in("train", out) == 130  # Ctrl-C mid-training: "Interrupted.", and the rerun goes on
    assert not (out / ".quickstart" / "train.json").exists()
    r = run_lamini("quickstart", "--tiny", "--yes", "--no-ui", "--out", str(out), env={"HF_HUB_OFFLINE": "1"},
                   timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "data: done before, skipped" in r.stderr and "train: done before" not in r.stderr
    summ = json.loads((out / "summary.json").read_text())
    names = [row["model"] for row in summ["rows"]]
    assert names == ["teacher", "smol-6l", "smol-6l-int8", "t5-tiny", "t5-tiny-int8"]
    for row in summ["rows"]:
        assert row["size_mb"] > 0 and row["tokens_per_s"] > 0, row
        assert row["local_tasks"] is not None, row
        assert (out / "herd").exists() and row["path"]
    for name in ("smol-6l", "smol-6l-int8", "t5-tiny"):
        row = next(x for x in summ["rows"] if x["model"] == name)
        assert 0 <= row["rouge_l"] <= 1
    # what each stage wrote, where a user looks for it
    assert (out / "data" / "dataset.parquet").is_file()
    assert (out / "herd" / "herd.json").is_file()
    assert (out / "herd-onnx" / "smol-6l" / "parity.md").is_file()
    assert (out / "eval" / "report.md").is_file() and (out / "eval" / "scores.png").is_file()
    assert "| teacher |" in r.stdout and "tokens/s" in r.stdout and "smol-6l-int8" in r.stdout
    assert set(summ["seconds"]) == {"teacher", "data", "train", "export", "eval", "speed"}

    again = run_lamini("quickstart", "--tiny", "--yes", "--no-ui", "--out", str(out), env={"HF_HUB_OFFLINE": "1"},
                       timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done before, skipped") == 6
    assert json.loads((out / "summary.json").read_text())["rows"] == summ["rows"]


def test_quickstart_asks_before_it_starts(tmp_path):
    r = run_lamini("quickstart", "--tiny", "--no-ui", "--out", str(tmp_path / "qs"))
    assert r.returncode == 1 and "pass --yes to run it unattended" in r.stderr
    assert not (tmp_path / "qs").exists()
