"""`lamini eval` through the real lm-evaluation-harness: tiny models of both families, a real
`lamini serve`, a real ONNX export, and the embedded teacher as the judge."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("lm_eval")

from lamini_serve.eval import runner as R  # noqa: E402
from lamini_serve.eval import tasks as T  # noqa: E402
from lamini_serve.models import Family, ModelSpec  # noqa: E402
from tests.conftest import run_lamini  # noqa: E402


def _model(name, path, kind="torch", prompted=True, **kw):
    return R.EvalModel(name, str(path), kind, spec=ModelSpec.resolve(str(path)), prompted=prompted, **kw)


def _docs(task, n):
    path = T.local_config(task)["dataset_kwargs"]["data_files"]["test"]
    return [json.loads(line) for line in open(path, encoding="utf-8")][:n]


def _hand_loglik(model, tok, spec, context: str, continuation: str) -> float:
    """log P(continuation | context), token by token, straight from the model (the context's
    trailing whitespace is scored with the continuation, lm-eval's rule)."""
    import torch

    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation

    if spec.family is Family.CAUSAL:
        ctx = tok(context)["input_ids"]
        cont = tok(context + continuation)["input_ids"][len(ctx):]
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            lps = torch.log_softmax(model(ids).logits[0].float(), -1)
        return float(sum(lps[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))
    enc = torch.tensor([tok(context)["input_ids"]])
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=enc, labels=torch.tensor([cont])).logits[0].float()
    lps = torch.log_softmax(logits, -1)
    return float(sum(lps[i, t] for i, t in enumerate(cont)))


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_scores_equal_a_hand_computation_on_five_items(kind, tiny_models, tmp_path):
    """acc and acc_norm of local_mc's first 5 items, by hand: the context in the model's prompt
    format, each choice scored as " choice", argmax of the sum (acc) and of the sum per character
    (acc_norm)."""
    m = _model(kind, tiny_models[kind])
    out = R.evaluate([m], T.resolve("local_mc"), tmp_path, R.Settings(limit=5, batch_size=2, device="cpu"))
    assert not out.failures
    rec = out.scores[0]
    spec = m.spec
    tok, model = spec.load_tokenizer(), spec.load_model("cpu", "float32")
    acc = acc_norm = 0
    for doc, sample in zip(_docs("local_mc", 5), rec["samples"]):
        context = spec.prompt(f"Question: {doc['question']}\nAnswer:", tok)
        lls = [_hand_loglik(model, tok, spec, context, " " + c) for c in doc["choices"]]
        assert [r[0] for r in sample["resps"]] == pytest.approx(lls, abs=2e-3)
        acc += max(range(4), key=lambda i: lls[i]) == doc["label"]
        acc_norm += max(range(4), key=lambda i: lls[i] / len(doc["choices"][i])) == doc["label"]
    assert rec["metrics"]["acc"] == pytest.approx(acc / 5)
    assert rec["value"] == rec["metrics"]["acc_norm"] == pytest.approx(acc_norm / 5)
    assert rec["n"] == 5 and rec["task_version"] == 1.0 and rec["lm_eval_version"].startswith("0.4")
    assert len(rec["model_hash"]) == 64


def test_every_local_task_runs_on_both_families(tiny_models, tmp_path):
    ms = [_model("llama", tiny_models["llama"]), _model("t5", tiny_models["t5"])]
    out = R.evaluate(ms, T.resolve("local"), tmp_path, R.Settings(limit=4, batch_size=4, device="cpu"))
    assert not out.failures
    got = {(s["model"], s["task"]): s for s in out.scores}
    assert len(got) == 10
    for s in got.values():
        assert 0.0 <= s["value"] <= 1.0 and s["n"] == 4
    gen = got[("llama", "local_qa")]["samples"]
    assert all(isinstance(x["resps"][0], str) for x in gen)  # generation really ran


@pytest.fixture(scope="module")
def llama_export(tiny_models, tmp_path_factory):
    from lamini_serve.export.exporter import export_model

    out = tmp_path_factory.mktemp("eval-export") / "llama"
    export_model(str(tiny_models["llama"]), out, report_prompts=0)
    return out


def test_the_onnx_export_scores_within_one_point_of_its_source(tiny_models, llama_export, tmp_path):
    src, exp = _model("llama", tiny_models["llama"]), _model("llama-int8", llama_export, kind="onnx")
    out = R.evaluate([src, exp], T.resolve("local_mc,local_sentiment,local_entail,local_cloze"), tmp_path,
                     R.Settings(batch_size=8, device="cpu"))
    assert not out.failures
    by = {(s["model"], s["task"]): s for s in out.scores}
    diffs = [100 * (by[("llama-int8", t)]["value"] - by[("llama", t)]["value"])
             for t in ("local_mc", "local_sentiment", "local_entail", "local_cloze")]
    assert abs(sum(diffs) / len(diffs)) <= 1.0, diffs
    # and the export's log-likelihoods are its own, close to the source's but not copied from it
    a = [r[0] for s in by[("llama", "local_mc")]["samples"] for r in s["resps"]]
    b = [r[0] for s in by[("llama-int8", "local_mc")]["samples"] for r in s["resps"]]
    assert a != b and max(abs(x - y) / abs(x) for x, y in zip(a, b)) < 0.05


@pytest.mark.slow
def test_the_endpoint_path_scores_as_the_in_process_path(tiny_models, serve, tmp_path):
    served = serve(f"llama={tiny_models['llama']}", "--engine", "llama=torch")
    local = _model("llama", tiny_models["llama"])
    remote = R.EvalModel("llama-remote", served.base_url, "endpoint", spec=local.spec, served="llama")
    ts = T.resolve("local_mc,local_cloze,local_qa")
    out = R.evaluate([local, remote], ts, tmp_path, R.Settings(limit=8, batch_size=4, device="cpu"))
    assert not out.failures, out.failures
    by = {(s["model"], s["task"]): s for s in out.scores}
    for t in ("local_mc", "local_cloze", "local_qa"):
        assert by[("llama-remote", t)]["value"] == pytest.approx(by[("llama", t)]["value"], abs=1e-9), t
    a = [r[0] for s in by[("llama", "local_mc")]["samples"] for r in s["resps"]]
    b = [r[0] for s in by[("llama-remote", "local_mc")]["samples"] for r in s["resps"]]
    assert b == pytest.approx(a, abs=1e-3)
    assert [s["resps"] for s in by[("llama-remote", "local_qa")]["samples"]] == \
        [s["resps"] for s in by[("llama", "local_qa")]["samples"]]


def test_an_endpoint_without_prompt_logprobs_is_named(tiny_models, tmp_path):
    from lamini_serve.testing.openai_server import FakeOpenAIServer

    with FakeOpenAIServer(models=("fake",)) as url:
        r = run_lamini("eval", "-m", f"fake={url}#fake", "--tokenizer", f"fake={tiny_models['llama']}",
                       "--tasks", "local_mc,local_cloze,local_qa", "--limit", "3", "--no-agreement",
                       "--out", str(tmp_path / "ev"))
    assert r.returncode == 0, r.stderr
    assert "does not return the prompt's log-probabilities (echo with logprobs)" in r.stderr
    assert "which local_mc, local_cloze need; its generation tasks still run" in r.stderr
    assert "Traceback" not in r.stderr
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert set(rep["scores"]["fake"]) == {"local_qa"}  # generation needs no log-probabilities
    assert {f["task"] for f in rep["failures"]} == {"local_mc", "local_cloze"}


def test_a_seq2seq_export_names_the_tasks_that_need_loglikelihoods(tiny_models, tmp_path):
    from lamini_serve.export.exporter import export_model

    exp = tmp_path / "t5-onnx"
    export_model(str(tiny_models["t5"]), exp, report_prompts=0)
    m = _model("t5-int8", exp, kind="onnx")
    lines = []
    out = R.evaluate([m], T.resolve("local_mc,local_qa"), tmp_path / "ev", R.Settings(limit=3, device="cpu"),
                     log=lines.append)
    assert [s["task"] for s in out.scores] == ["local_qa"]
    assert [(f[0], f[1]) for f in out.failures] == [("t5-int8", "local_mc")]
    assert "cannot give the log-likelihoods that local_mc need" in lines[0]


def test_cli_bad_input_is_one_line(tiny_models, tmp_path):
    r = run_lamini("eval", "-m", str(tiny_models["llama"]), "--tasks", "local_mcq,sciq", "--no-agreement")
    assert r.returncode == 1 and "unknown task 'local_mcq'; did you mean local_mc" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = run_lamini("eval", "-m", "x=http://127.0.0.1:9/v1#x", "--no-agreement")
    assert r.returncode == 2 and "--tokenizer x=PATH" in r.stderr, r.stderr
    r = run_lamini("eval", "-m", str(tiny_models["llama"]), "--tasks", "none")
    assert r.returncode == 1 and "compares models with a teacher" in r.stderr, r.stderr
    r = run_lamini("eval")
    assert r.returncode == 2 and "--herd" in r.stderr


@pytest.mark.slow
def test_cli_resumes_reports_and_goes_on_past_a_task_it_cannot_fetch(tiny_models, teacher_home, tmp_path):
    """The embedded teacher and a tiny student: local tasks, a hub task that cannot be fetched offline,
    agreement and the A-D judge on the teacher; a rerun reuses every stored result."""
    out = tmp_path / "ev"
    args = ["eval", "-m", "embedded", "-m", f"tiny={tiny_models['llama']}", "--tasks", "local_mc,local_qa,sciq",
            "--limit", "3", "--max-instructions", "3", "--max-tokens", "24", "--out", str(out)]
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    r = run_lamini(*args, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sciq" in r.stderr and "could not be fetched" in r.stderr and "going on with the others" in r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["scores"]) == {"teacher", "tiny"} and set(rep["scores"]["teacher"]) == {"local_mc", "local_qa"}
    assert {(f["model"], f["task"]) for f in rep["failures"]} == {("teacher", "sciq"), ("tiny", "sciq")}
    assert rep["agreement"]["teacher"] == "teacher" and set(rep["agreement"]["models"]) == {"tiny"}
    ag = rep["agreement"]["models"]["tiny"]
    assert 0 <= ag["rouge_l"] < 0.5 and ag["n"] == 3 and not math.isnan(ag["length_ratio"])
    assert set(rep["judge"]["models"]) == {"teacher", "tiny"}
    for counts in rep["judge"]["models"].values():
        assert sum(counts.values()) == 3
    for f in ("report.md", "scores.png", "judge.png"):
        assert (out / f).is_file()
    assert "| teacher | teacher | chat |" in r.stdout and "Agreement with the teacher" in r.stdout
    teacher_answers = json.loads((out / "answers" / "teacher.json").read_text())["texts"]
    assert len(teacher_answers) == 3 and all(t.strip() for t in teacher_answers)

    (out / "scores" / "tiny" / "local_qa.json").unlink()
    r2 = run_lamini(*args, env=env, timeout=900)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "3 (model, task) results reused" in r2.stderr
    rep2 = json.loads((out / "report.json").read_text())
    assert rep2["scores"] == rep["scores"] and rep2["agreement"] == rep["agreement"]


def test_a_judge_that_answers_nonsense_is_counted_not_guessed(tiny_models, tmp_path):
    from lamini_serve.testing.openai_server import FakeOpenAIServer

    with FakeOpenAIServer(models=("judge",)) as url:
        r = run_lamini("eval", "-m", f"teacher={tiny_models['llama']}", "-m", f"t5={tiny_models['t5']}",
                       "--tasks", "none", "--max-instructions", "4", "--max-tokens", "8",
                       "--judge", f"{url}#judge", "--out", str(tmp_path / "ev"))
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert rep["judge"]["models"]["t5"] == {"A": 0, "B": 0, "C": 0, "D": 0, "unparsed": 4}
    assert "unparsed" in r.stdout


def test_herd_scores_the_teacher_students_and_exports_in_order(tiny_models, llama_export, tmp_path):
    """`--herd DIR` finds what `lamini serve --herd DIR` serves: the teacher herd.json names, each
    student and each export in DIR-onnx (as <student>-int8)."""
    import shutil

    from lamini_serve.checkpoint import METADATA_FILE

    herd = tmp_path / "herd"
    for name in ("llama", "t5"):
        shutil.copytree(tiny_models[name], herd / name)
        meta = json.loads((herd / name / METADATA_FILE).read_text())
        (herd / name / METADATA_FILE).write_text(json.dumps({**meta, "role": "student"}))
    shutil.copytree(llama_export, tmp_path / "herd-onnx" / "llama")
    (herd / "herd.json").write_text(json.dumps({"teacher": str(tiny_models["gpt2"])}))
    out = tmp_path / "ev"
    r = run_lamini("eval", "--herd", str(herd), "--tasks", "local_mc", "--limit", "2", "--max-instructions", "2",
                   "--max-tokens", "8", "--judge", "none", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert [(m["name"], m["role"], m["of"], m["kind"]) for m in rep["models"]] == [
        ("teacher", "teacher", None, "torch"), ("llama", "student", None, "torch"),
        ("llama-int8", "export", "llama", "onnx"), ("t5", "student", None, "torch")]
    assert set(rep["scores"]) == {"teacher", "llama", "llama-int8", "t5"}
    assert set(rep["agreement"]["models"]) == {"llama", "llama-int8", "t5"} and rep["judge"] is None
