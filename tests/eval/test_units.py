"""The parts of `lamini eval` that need no model: task names, the grade parser, agreement figures, the report."""

from __future__ import annotations

import json

import pytest

from lamini_serve.errors import LaminiError
from lamini_serve.eval import agreement as A
from lamini_serve.eval import report, tasks


def test_groups_expand_in_order_without_repeats():
    refs = tasks.resolve("local_qa,local, local_mc")
    assert [r.name for r in refs] == ["local_qa", "local_mc", "local_sentiment", "local_entail", "local_cloze"]
    paper = tasks.resolve("paper", known=[])
    assert len(paper) == 15 and {r.metric for r in paper} == {"acc", "acc_norm", "f1"}
    assert {r.name: r.metric for r in paper}["hellaswag"] == "acc_norm"
    assert {r.name: r.metric for r in paper}["record"] == "f1"


def test_local_tasks_point_at_their_shipped_data():
    for name in tasks.LOCAL_METRICS:
        cfg = tasks.local_config(name)
        path = cfg["dataset_kwargs"]["data_files"]["test"]
        rows = [json.loads(line) for line in open(path, encoding="utf-8")]
        assert len(rows) == 60, name


def test_an_unknown_task_names_the_close_matches():
    with pytest.raises(LaminiError) as exc:
        tasks.resolve("local_mcq", known=["hellaswag", "arc_easy"])
    assert "unknown task 'local_mcq'" in str(exc.value) and "local_mc" in str(exc.value)
    with pytest.raises(LaminiError, match="hellaswag"):
        tasks.resolve("helaswag", known=["hellaswag", "arc_easy"])
    assert tasks.resolve("arc_easy", known=["hellaswag", "arc_easy"])[0].metric == ""  # reported by its first metric


@pytest.mark.parametrize("reply,grade", [
    ("A", "A"), ("B.", "B"), (" (C)", "C"), ("Grade: D", "D"), ("rating: B - minor errors", "B"),
    ("**A**", "A"), ("C\nThe response is relevant but wrong.", "C"), ("D: invalid", "D"),
    ("A good answer would mention water.", A.UNPARSED), ("Dear Hiring Manager,", A.UNPARSED),
    ("", A.UNPARSED), ("E", A.UNPARSED), ("I think it is B", A.UNPARSED), ("AB", A.UNPARSED),
    ("**Grade:** B", "B"), ("Grade: C.", "C"), ("A, B or C", A.UNPARSED), ("B-movie quality", A.UNPARSED),
    ("D - invalid", "D"), ("A: A: A: A:", A.UNPARSED),
])
def test_grades_parse_only_when_they_are_one_grade(reply, grade):
    assert A.parse_grade(reply) == grade


def test_the_judge_prompt_carries_the_four_definitions():
    text = A.judge_prompt("Name a color.", "Blue.")
    for g in "ABCD":
        assert f"\n{g}: " in text
    assert "Name a color." in text and "Blue." in text


def test_agreement_figures():
    teacher = ["the cat sat on the mat", "water boils at one hundred degrees"]
    same = A.agreement(teacher, teacher)
    assert same["rouge_l"] == pytest.approx(1.0) and same["chrf"] == pytest.approx(100.0)
    assert same["length_ratio"] == pytest.approx(1.0)
    other = A.agreement(["the cat sat", "it is hot"], teacher)
    assert 0 < other["rouge_l"] < 1 and other["chrf"] < 60
    assert other["length_ratio"] == pytest.approx(6 / 12)
    assert A.grade_counts(["A", "A", "unparsed", "D"]) == {"A": 2, "B": 0, "C": 0, "D": 1, "unparsed": 1}


def _models():
    return [{"name": "smol", "role": "student", "kind": "torch", "source": "x", "prompt": "chat", "hash": "ab"},
            {"name": "teacher", "role": "teacher", "kind": "torch", "source": "embedded", "prompt": "chat"},
            {"name": "smol-int8", "role": "export", "of": "smol", "kind": "onnx", "source": "y", "prompt": "chat"}]


def _score(model, task, value):
    return {"model": model, "task": task, "metric": "acc", "value": value, "stderr": 0.1, "n": 10,
            "task_version": 1.0, "model_hash": None}


def test_report_orders_tables_averages_and_draws(tmp_path):
    ts = [{"name": "local_mc", "label": "local_mc", "metric": "acc_norm"},
          {"name": "sst2", "label": "SST", "metric": "acc"}]
    scores = [_score("teacher", "local_mc", 0.5), _score("teacher", "sst2", 0.7), _score("smol", "local_mc", 0.25),
              _score("smol-int8", "local_mc", 0.25), _score("smol-int8", "sst2", 0.5)]
    rep = report.build(_models(), ts, scores, [("smol", "sst2", "its dataset could not be fetched")],
                       agreement={"teacher": "teacher", "instructions": "builtin", "n": 2, "max_tokens": 8,
                                  "models": {"smol": {"rouge_l": 0.5, "chrf": 40.0, "length_ratio": 0.9, "n": 2}}},
                       judge={"judge": "teacher", "models": {"smol": {"A": 1, "B": 0, "C": 0, "D": 0, "unparsed": 1}}})
    assert [m["name"] for m in rep["models"]] == ["teacher", "smol", "smol-int8"]
    assert rep["averages"]["teacher"] == {"value": pytest.approx(0.6), "tasks": 2, "complete": True}
    assert rep["averages"]["smol"]["complete"] is False
    assert rep["paper"]["results"]["LaMini-GPT-1.5B"]["average"] == 63.0  # sst2 is one of the paper's tasks
    md = report.markdown(rep)
    assert "| teacher | teacher | chat | 50.0 | 70.0 | 60.0 |" in md
    assert "| smol | student | chat | 25.0 | - | 25.0* |" in md
    assert "LaMini-Flan-T5-783M" in md and "its dataset could not be fetched" in md
    assert "a proxy for human rating" in md
    files = report.write(rep, tmp_path)
    assert {f.name for f in files} == {"report.json", "report.md", "scores.png", "judge.png"}
    for f in files:
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report.json").read_text())["scores"]["smol"]["local_mc"]["value"] == 0.25


def test_paper_table_averages_are_the_mean_of_its_tasks():
    for name, res in report.PAPER_RESULTS.items():
        tasks15 = [v for k, v in res.items() if k != "average"]
        assert len(tasks15) == 15
        assert sum(tasks15) / 15 == pytest.approx(res["average"], abs=0.051), name


def test_models_are_matched_with_the_papers_rows():
    assert report.published({"source": "MBZUAI/LaMini-GPT-1.5B", "role": "student"}) == "LaMini-GPT-1.5B"
    assert report.published({"source": "openai-community/gpt2-xl", "role": "base"}) == "GPT-2 XL (1.5B)"
    assert report.published({"source": "runs/herd/x", "role": "student", "base": "google/flan-t5-large"}) \
        == "LaMini-Flan-T5-783M"
    assert report.published({"source": "runs/herd/smol-6l", "role": "student", "base": "teacher layers"}) is None
    assert report.published({"source": "openai-community/gpt2-xl", "role": "student"}) == "GPT-2 XL (1.5B)"
    paper = [n for n in tasks.PAPER_TASKS]
    ts = [{"name": n, "label": n, "metric": "acc"} for n in paper]
    models = [{"name": "gpt2-xl", "role": "base", "kind": "torch", "source": "gpt2-xl", "prompt": "raw"},
              {"name": "half", "role": "student", "kind": "torch", "source": "x", "prompt": "chat"}]
    scores = [_score("gpt2-xl", n, 0.5) for n in paper] + [_score("half", n, 0.5) for n in paper[:7]]
    md = report.markdown(report.build(models, ts, scores, []))
    assert "| 50.0 | 50.0 | 53.0 (GPT-2 XL (1.5B)) |" in md  # our average of the 15 beside the published one
    assert "| half | student | chat | " + " | ".join(["50.0"] * 7 + ["-"] * 8) + " | 50.0* | - |  |" in md
    md = report.markdown(report.build(models, ts[:1], scores[:1], []))
    assert "published (Wu et al.)" not in md.split("## The paper")[0]  # one task is no basis for comparison


def test_a_judge_that_grades_everything_alike_is_called_out():
    same = {"judge": "j", "models": {"a": {"A": 9, "B": 0, "C": 0, "D": 0, "unparsed": 1},
                                     "b": {"A": 10, "B": 0, "C": 0, "D": 0, "unparsed": 0}}}
    assert "does not tell them apart" in report.judge_warning(same)
    mixed = {"judge": "j", "models": {"a": {"A": 9, "B": 1, "C": 0, "D": 0, "unparsed": 0},
                                      "b": {"A": 2, "B": 3, "C": 3, "D": 2, "unparsed": 0}}}
    assert report.judge_warning(mixed) is None
    md = report.markdown(report.build([], [], [], [], judge=same))
    assert "**Note:** the judge gave A to 19 of the 19 answers" in md
