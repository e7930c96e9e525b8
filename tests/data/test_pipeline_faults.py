"""The data stage against a teacher that answers badly: garbage, refusals, stalls, answers the filters reject."""

import json

import pytest

from lamini_serve.data.pipeline import DataConfig, run_data
from lamini_serve.errors import LaminiError
from lamini_serve.teacher.backends import HTTPTeacher
from lamini_serve.testing.openai_server import BAD_REQUEST, FakeOpenAIServer, FaultPlan
from tests.conftest import run_lamini


def _run(url, out, logs=None, **teacher_kw):
    cfg = DataConfig(out=str(out), calls=6, topic_calls=3, stats=False)
    kw = {"timeout": 2.0, "backoff_base": 0.01, **teacher_kw}
    return run_data(cfg, HTTPTeacher(url, "fake", **kw), log=(logs.append if logs is not None else lambda m: None))


def _rows(run_dir, name="dataset.parquet"):
    import pyarrow.parquet as pq

    return pq.read_table(run_dir / name).to_pylist()


def _texts(run_dir):
    return sorted((r["instruction"], r["response"], r["instruction_source"]) for r in _rows(run_dir))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The dataset a teacher without faults makes."""
    out = tmp_path_factory.mktemp("clean")
    with FakeOpenAIServer() as url:
        summary = _run(url, out)
    assert summary["rows"] > 20 and summary["failures_this_run"] == {} and summary["unanswered"] == 0
    return _texts(out)


def test_garbage_generation_replies_are_asked_again_in_the_same_run(tmp_path, clean):
    srv = FakeOpenAIServer(faults=FaultPlan({"garbage": 0.3, "prose": 0.3}, roles=("generate",)))
    with srv as url:
        summary = _run(url, tmp_path)
    assert srv.served["garbage"] > 0 and srv.served["prose"] > 0
    assert summary["failures_this_run"] == {} and summary["unanswered"] == 0
    assert _texts(tmp_path) == clean


def test_garbage_generation_replies_fail_and_are_asked_again_on_rerun(tmp_path, clean):
    # The same calls stay garbage for two attempts: the run's one retry does not save them.
    faults = FaultPlan({"garbage": 0.4}, roles=("generate",), sticky=True, faulty_attempts=2)
    srv = FakeOpenAIServer(faults=faults)
    logs = []
    with srv as url:
        first = _run(url, tmp_path, logs, max_retries=1)
        bad_calls = srv.served["garbage"] // 2
        assert bad_calls > 0
        assert first["failures_this_run"] == {"generate_failed": bad_calls}
        assert first["errors_this_run"]["first"] == "garbage: undecodable characters"
        assert any(m.startswith(f"generate: {bad_calls} failed") for m in logs)
        assert first["rows"] < len(clean)
        second = _run(url, tmp_path, max_retries=1)
    assert second["failures_this_run"] == {}
    assert _texts(tmp_path) == clean


def test_an_unusable_reply_is_asked_again_until_the_teacher_repeats_its_reason(tmp_path):
    # Two bad attempts per call, garbage or prose at random. A call that got the same kind twice
    # is a teacher that means it: failed, for the next run. One that got both kinds is asked a
    # third time, which is clean.
    srv = FakeOpenAIServer(faults=FaultPlan({"garbage": 0.5, "prose": 0.5}, roles=("generate",), faulty_attempts=2))
    with srv as url:
        summary = _run(url, tmp_path, max_retries=3)
    calls = [h for h in srv.history.values() if h[0] != "ok"]
    assert len(calls) == 9
    mixed = [h for h in calls if len(set(h[:2])) == 2]
    same = [h for h in calls if len(set(h[:2])) == 1]
    assert mixed and same
    assert all(h == [h[0], h[1], "ok"] for h in mixed) and all(len(h) == 2 for h in same)
    assert summary["failures_this_run"] == {"generate_failed": len(same)}


def test_calls_an_old_store_kept_without_instructions_are_asked_again(tmp_path, clean):
    from lamini_serve.data.pipeline import plan_generation
    from lamini_serve.data.seeds import load_seeds, load_topics
    from lamini_serve.data.store import Store

    # Before, a garbage reply was stored as a finished call with no instructions.
    cfg = DataConfig(out=str(tmp_path), calls=6, topic_calls=3, stats=False)
    plan = plan_generation(cfg, load_seeds("builtin"), load_topics("builtin"), "chat", "fake")
    with Store(tmp_path / "store.sqlite") as store:
        for p in plan[:3]:
            store.add_call(p.request.key, p.request.kind, p.source, "\ufffd#%$@!", [])
    with FakeOpenAIServer() as url:
        summary = _run(url, tmp_path)
    assert summary["failures_this_run"] == {} and _texts(tmp_path) == clean
    with Store(tmp_path / "store.sqlite") as store:
        assert store.count("calls") == 1 + 9  # the seeds' pseudo-call and every planned call, once


@pytest.mark.parametrize("fault, said", [
    ("400", f"HTTP 400: {BAD_REQUEST}"),
    ("500", "HTTP 500: internal error (after 1 retries)"),
    ("timeout", "no answer within 0.3 s (after 1 retries)"),
])
def test_a_run_where_every_request_fails_stops_with_the_teachers_reason(tmp_path, fault, said):
    srv = FakeOpenAIServer(faults=FaultPlan({fault: 1.0}, faulty_attempts=10**6, timeout_sleep=1.0))
    with srv as url, pytest.raises(LaminiError) as err:
        _run(url, tmp_path, timeout=0.3, max_retries=1)
    msg = str(err.value)
    assert "\n" not in msg
    assert "every request to the teacher failed this run (generate_failed 9;" in msg
    assert f"first error: {said} (9 of 9)" in msg
    summary = json.loads((tmp_path / "run.json").read_text())["summary"]
    assert summary["failures_this_run"] == {"generate_failed": 9} and summary["rows"] == 0
    assert summary["errors_this_run"] == {"first": said, "most_common": said, "most_common_count": 9}


def test_the_cli_exits_non_zero_and_prints_the_teachers_error(tmp_path):
    srv = FakeOpenAIServer(faults=FaultPlan({"400": 1.0}, faulty_attempts=10**6))
    with srv as url:
        r = run_lamini("data", "run", str(tmp_path), "--teacher-url", url, "--teacher-model", "fake",
                       "--calls", "2", "--topic-calls", "0", "--no-stats")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and BAD_REQUEST in errors[0] and "generate_failed 2" in errors[0]


def test_some_failed_answers_are_counted_and_their_reason_shown(tmp_path, clean):
    srv = FakeOpenAIServer(faults=FaultPlan({"400": 0.1}, roles=("answer",), sticky=True, faulty_attempts=10**6))
    logs = []
    with srv as url:
        summary = _run(url, tmp_path, logs)
    failed = srv.served["400"]
    assert 0 < failed == summary["unanswered"] and summary["rows"] == len(clean) - failed
    assert summary["failures_this_run"] == {"respond_failed": failed}
    assert summary["errors_this_run"]["most_common"] == f"HTTP 400: {BAD_REQUEST}"
    assert any(m.startswith(f"respond: {failed} failed") and BAD_REQUEST in m for m in logs)


def test_an_answer_the_filters_always_reject_is_rejected_once_and_not_asked_again(tmp_path, clean):
    faults = FaultPlan({"loop": 0.1}, roles=("answer",), sticky=True, faulty_attempts=10**6)
    srv = FakeOpenAIServer(faults=faults)
    with srv as url:
        first = _run(url, tmp_path)
        looped = srv.served["loop"] // 2  # asked twice: the same reason both times
        assert looped > 0 and srv.served["loop"] == 2 * looped
        assert first["unanswered"] == 0 and first["failures_this_run"] == {}
        assert first["rows"] == len(clean) - looped
        assert first["rejected_by_reason"]["answer rejected: repeats a phrase"] == looped
        served = sum(srv.served.values())
        second = _run(url, tmp_path)
        assert sum(srv.served.values()) == served  # the rerun asks nothing
    assert second["unanswered"] == 0 and second["rows"] == first["rows"]
    rejected = [r for r in _rows(tmp_path, "rejected.parquet") if r["reason"].startswith("answer rejected")]
    assert len(rejected) == looped and {r["reason"] for r in rejected} == {"answer rejected: repeats a phrase"}
    kept = {r[0] for r in _texts(tmp_path)}
    assert kept.isdisjoint(r["instruction"] for r in rejected) and kept <= {r[0] for r in clean}


def test_a_rerun_whose_only_work_is_calls_that_stay_garbage_exits_cleanly(tmp_path):
    """A seeded call repeats its garbage on every rerun: that is the teacher's content, not a
    teacher that answers nothing, so a resumed run must not stop with "every request failed"."""
    faults = FaultPlan({"garbage": 0.4}, roles=("generate",), sticky=True, faulty_attempts=10**6)
    srv = FakeOpenAIServer(faults=faults)
    with srv as url:
        first = _run(url, tmp_path)
        assert first["rows"] > 0
        again = _run(url, tmp_path)  # only the garbage calls are left to ask: they fail again
    assert again["rows"] == first["rows"]
