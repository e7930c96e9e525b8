"""Work keys: what decides the text is in them, the teacher's address is not."""

import json

from lamini_serve.data.pipeline import DataConfig, run_data
from lamini_serve.teacher.backends import HTTPTeacher
from lamini_serve.testing.openai_server import FakeOpenAIServer


def _run(url, out, teacher=None, **cfg_kw):
    cfg = DataConfig(out=str(out), **{"calls": 4, "topic_calls": 2, "stats": False, **cfg_kw})
    return run_data(cfg, teacher or HTTPTeacher(url, "fake"), log=lambda m: None)


def _rows(run_dir):
    import pyarrow.parquet as pq

    rows = pq.read_table(run_dir / "dataset.parquet").to_pylist()
    return sorted((r["instruction"], r["response"], r["key"], r["instruction_key"], r["teacher"]) for r in rows)


def _served(srv):
    return sum(srv.served.values())


def test_the_same_server_under_another_name_is_the_same_work(tmp_path):
    srv = FakeOpenAIServer()
    with srv as url:
        other_name = url.replace("127.0.0.1", "localhost")
        assert other_name != url
        first = _run(url, tmp_path / "a")
        served = _served(srv)
        again = _run(other_name, tmp_path / "a")  # a rerun through another address: nothing to redo
        assert _served(srv) == served and again["rows"] == first["rows"] > 0
        _run(other_name, tmp_path / "b")  # a fresh run through the other address: the same dataset
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    assert {r[4] for r in _rows(tmp_path / "a")} == {"fake"}
    record = json.loads((tmp_path / "a" / "run.json").read_text())  # the address is provenance
    assert record["teacher"] == "fake" and record["teacher_provenance"]["url"] == other_name


def _old_store(srv, url, out):
    """A run made when the teacher's address was part of every key: (its rows, requests served)."""
    old = HTTPTeacher(url, "fake")
    old.id = f"fake@{old.config.base_url}"  # how a teacher was named in keys before
    _run(url, out, old)
    return _rows(out), _served(srv)


def test_a_store_keyed_by_the_old_address_is_still_used(tmp_path):
    srv = FakeOpenAIServer()
    with srv as url:
        before, served = _old_store(srv, url, tmp_path)
        _run(url.replace("127.0.0.1", "localhost"), tmp_path)
        assert _served(srv) == served
        _run(url, tmp_path)  # and it stays pinned once run.json names the new teacher
        assert _served(srv) == served
    assert _rows(tmp_path) == before


def test_model_prompt_and_sampling_decide_the_keys(tmp_path):
    srv = FakeOpenAIServer()
    with srv as url:
        _run(url, tmp_path / "base")
        base = _rows(tmp_path / "base")
        # (name, settings, teacher, which key must change: 2 the answer's, 3 the instruction's)
        for name, kw, teacher, col in [("model", {}, HTTPTeacher(url, "other-model"), 2),
                                       ("model", {}, HTTPTeacher(url, "other-model"), 3),
                                       ("temperature", {"resp_temperature": 0.5}, None, 2),
                                       ("max_tokens", {"resp_max_tokens": 100}, None, 2),
                                       ("system", {"system_prompt": "Answer briefly."}, None, 2),
                                       ("gen_temperature", {"gen_temperature": 0.5}, None, 3),
                                       ("gen_max_tokens", {"gen_max_tokens": 500}, None, 3),
                                       ("seed", {"seed": 7}, None, 3)]:
            out = tmp_path / f"{name}-{col}"
            _run(url, out, teacher, **kw)
            keys = {r[col] for r in _rows(out)}
            assert keys and keys.isdisjoint(r[col] for r in base), (name, col)


def test_another_model_in_an_old_store_is_new_work(tmp_path):
    srv = FakeOpenAIServer()
    with srv as url:
        before, served = _old_store(srv, url, tmp_path)
        _run(url, tmp_path, HTTPTeacher(url, "other-model"))
        assert _served(srv) > served
    after = _rows(tmp_path)
    assert {r[4] for r in after} == {"other-model"}
    assert {r[2] for r in after}.isdisjoint(r[2] for r in before)
