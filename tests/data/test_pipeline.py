"""`lamini data run` end to end against a real local OpenAI-compatible server."""

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from lamini_serve.data.pipeline import DataConfig, merge_runs, run_data
from lamini_serve.teacher.backends import HTTPTeacher
from lamini_serve.testing.openai_server import FakeOpenAIServer, FaultPlan
from tests.conftest import run_lamini

SMALL = ["--calls", "6", "--topic-calls", "3", "--answer-seeds", "--no-stats", "--timeout", "2"]


def _rows(run_dir):
    import pyarrow.parquet as pq

    return pq.read_table(run_dir / "dataset.parquet").to_pylist()


def _data_cli(out, url, *extra, env=None):
    return run_lamini("data", "run", str(out), "--teacher-url", url, "--teacher-model", "fake", *SMALL, *extra, env=env)


def test_faults_are_survived_and_a_rerun_completes_the_dataset(tmp_path):
    faults = FaultPlan({"429": 0.1, "500": 0.1, "timeout": 0.05, "truncated": 0.1, "garbage": 0.05, "empty": 0.05},
                       retry_after=0.1, timeout_sleep=3.0)
    srv = FakeOpenAIServer(faults=faults)
    with srv as url:
        cfg = DataConfig(out=str(tmp_path), calls=6, topic_calls=3, answer_seeds=True, stats=False)
        first = run_data(cfg, HTTPTeacher(url, "fake", timeout=2.0, backoff_base=0.02), log=lambda m: None)
        assert srv.served["garbage"] + srv.served["empty"] > 0
        # Garbage and empty replies were asked again at once, and the retries came back clean.
        assert first["unanswered"] == 0 and first["failures_this_run"] == {}
        served = sum(srv.served.values())
        second = run_data(cfg, HTTPTeacher(url, "fake", timeout=2.0, backoff_base=0.02), log=lambda m: None)
        assert sum(srv.served.values()) == served  # nothing left to ask
    assert second["unanswered"] == 0 and second["rows"] == first["rows"]
    rows = _rows(tmp_path)
    assert len(rows) == second["rows"] > 100
    assert len({r["key"] for r in rows}) == len(rows)
    assert len({r["instruction"] for r in rows}) == len(rows)
    assert {r["instruction_source"] for r in rows} == {"seed", "example_guided", "topic_guided"}
    for r in rows:
        assert r["response"] == f"Here is a concise answer to: {r['instruction'].strip()[:200]}".strip()
        assert r["teacher"] == "fake" and json.loads(r["response_params"])["temperature"] == 0.0
    # The dataset loads with the datasets library, as a user would.
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "dataset.parquet"), split="train")
    assert ds.num_rows == len(rows) and {"instruction", "response", "instruction_source"} <= set(ds.column_names)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["config"]["calls"] == 6 and "transformers" in record["versions"] and record["history"]
    assert record["teacher"] == "fake" and record["teacher_provenance"]["url"] == url


def _count(db, table):
    try:
        return sqlite3.connect(db).execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except sqlite3.Error:
        return 0


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_to_the_same_rows(tmp_path, sig):
    # slow enough answers that the kill lands mid-run even when this test process is starved
    # of CPU for a few seconds (at 0.05 s a busy 2-core CI machine saw the run finish first)
    with FakeOpenAIServer(latency=0.15) as url:
        whole, cut = tmp_path / "whole", tmp_path / "cut"
        r = _data_cli(whole, url, "--concurrency", "4")
        assert r.returncode == 0, r.stderr
        for attempt in range(3):  # a signal that lands after the run has finished proves nothing: again
            shutil.rmtree(cut, ignore_errors=True)
            cmd = [sys.executable, "-m", "lamini_serve", "data", "run", str(cut), "--teacher-url", url,
                   "--teacher-model", "fake", *SMALL, "--concurrency", "4"]
            # Ctrl-C as a user's terminal delivers it, whatever this test process inherited or
            # was left with by earlier tests: a child starts with SIGINT ignored or blocked if its
            # parent had it so (seen in the whole suite in a fresh clone), and Python keeps it so
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    preexec_fn=_default_sigint)
            deadline = time.time() + 60
            while _count(cut / "store.sqlite", "responses") < 20 and time.time() < deadline:
                time.sleep(0.05)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=30)
            done_before = _count(cut / "store.sqlite", "responses")
            if done_before < len(_rows(whole)):
                break
        assert 0 < done_before < len(_rows(whole)), f"the run finished before the signal, {attempt + 1} times"
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and "Interrupted" in err and "Traceback" not in err
        assert not (cut / "dataset.parquet").exists()
        r = _data_cli(cut, url, "--concurrency", "4")
        assert r.returncode == 0, r.stderr
        assert f"{done_before} already done" in r.stderr
    key = lambda rows: sorted((x["instruction"], x["response"], x["key"]) for x in rows)  # noqa: E731
    assert key(_rows(cut)) == key(_rows(whole))


def test_refused_key_is_one_line_and_no_retries(tmp_path):
    srv = FakeOpenAIServer(api_key="right")
    with srv as url:
        r = _data_cli(tmp_path, url, "--concurrency", "1", env={"OPENAI_API_KEY": "wrong"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")] == [
        ln for ln in r.stderr.splitlines() if "refused the API key" in ln]
    assert srv.served["401"] == 1


def test_teacher_down_stops_with_a_clear_message_and_keeps_the_run(tmp_path):
    r = run_lamini("data", "run", str(tmp_path), "--teacher-url", "http://127.0.0.1:9/v1", "--teacher-model", "x",
                   *SMALL, "--max-retries", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "unreachable" in r.stderr and "rerun the same command" in r.stderr
    assert (tmp_path / "run.json").is_file() and (tmp_path / "store.sqlite").is_file()


def test_shards_merge_into_the_whole(tmp_path):
    with FakeOpenAIServer() as url:
        parts = []
        for i in range(3):
            out = tmp_path / f"shard{i}"
            r = _data_cli(out, url, "--shard", f"{i}/3")
            assert r.returncode == 0, r.stderr
            parts.append(out)
        whole = tmp_path / "whole"
        assert _data_cli(whole, url).returncode == 0
    merged = merge_runs(tmp_path / "merged", parts)
    key = lambda rows: sorted((x["instruction"], x["response"]) for x in rows)  # noqa: E731
    assert merged["rows"] == len(_rows(whole))
    assert key(_rows(tmp_path / "merged")) == key(_rows(whole))


def test_broken_seed_file_names_the_line(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Say hi to me."}\n{oops\n')
    r = run_lamini("data", "run", str(tmp_path / "out"), "--teacher-url", "http://127.0.0.1:9/v1",
                   "--teacher-model", "x", "--seeds", str(seeds))
    assert r.returncode == 1 and "line 2 is not valid JSON" in r.stderr and "Traceback" not in r.stderr


def test_import_runs_the_same_dedup_and_filters(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"instruction": "Explain photosynthesis simply.", "output": "Plants make food from light."},
            {"instruction": "explain photosynthesis simply", "output": "dup"},
            {"instruction": "Describe the image below.", "output": "?"},
            {"instruction": "List three uses of copper in houses.", "output": "Wires, pipes, roofs."}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run_lamini("data", "import", str(src), str(tmp_path / "out"), "--column", "output=output")
    assert r.returncode == 0, r.stderr
    kept = _rows(tmp_path / "out")
    assert [k["instruction"] for k in kept] == ["Explain photosynthesis simply.", "List three uses of copper in houses."]
    assert kept[0]["response"] == "Plants make food from light."


def test_generated_copies_of_seeds_are_dropped_even_when_seeds_are_not_answered(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in
                             ["Name three primary colours.", "What is the boiling point of water?", "Write a haiku about rain."]))
    with FakeOpenAIServer() as url:
        cfg = DataConfig(out=str(tmp_path / "run"), seeds=str(seeds), calls=2, topic_calls=0, stats=False)
        teacher = HTTPTeacher(url, "fake")
        summary = run_data(cfg, teacher, log=lambda m: None)
    rows = _rows(tmp_path / "run")
    assert rows and all(r["instruction_source"] == "example_guided" for r in rows)
    assert summary["unanswered"] == 0


def test_import_reads_alpaca_output_and_lamini_response_columns(tmp_path):
    for col in ("output", "response"):
        src = tmp_path / f"{col}.jsonl"
        src.write_text(json.dumps({"instruction": "Explain rain to a child.", col: "Water falls from clouds."}) + "\n")
        r = run_lamini("data", "import", str(src), str(tmp_path / col))
        assert r.returncode == 0, r.stderr
        assert [x["response"] for x in _rows(tmp_path / col)] == ["Water falls from clouds."]
    r = run_lamini("data", "import", str(src), str(tmp_path / "bad"), "--column", "output=answer")
    assert r.returncode == 1 and "no column 'answer' for output" in r.stderr
