"""`lamini train` as a user runs it: the herd index, and one-line errors for bad input."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from lamini_serve.cli import cli
from lamini_serve.errors import LaminiError
from lamini_serve.train.data import load_pairs
from lamini_serve.train.herd import HERD_FILE, herd_index, write_herd_index
from tests.train.test_train import PAIRS


def _recipe_file(tmp_path, base, names=("s",), dataset=None, **defaults):
    if dataset is None:
        dataset = tmp_path / "data.jsonl"
        dataset.write_text("".join(json.dumps(p) + "\n" for p in PAIRS * 2))
    d = {"effective_batch_size": 8, "per_device_batch_size": 8, "max_length": 64, "logging_steps": 1,
         "eval_share": 0.0, "learning_rate": 3e-3, "bf16": "false", **defaults}
    students = "\n".join(f"  - {{name: {n}, base: {base}}}" for n in names)
    p = tmp_path / "recipe.yaml"
    p.write_text(f"dataset: {dataset}\noutput: {tmp_path / 'herd'}\ndefaults: {json.dumps(d)}\nstudents:\n{students}\n")
    return p


def _lamini(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def _one_line_error(r) -> str:
    """The CLI's own error (exit 1, `Error: ...` on one line), not an exception that escaped it."""
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.exception, r.output)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


def test_herd_json_names_every_student_trained_by_separate_runs(tmp_path, tiny_models):
    recipe = _recipe_file(tmp_path, tiny_models["gpt2"], names=("a", "b"))
    for name in ("b", "a"):  # two `--student` runs, as each `--parallel-students` child is
        r = _lamini("train", recipe, "--student", name, "--max-steps", 1)
        assert r.exit_code == 0, r.output
    herd = json.loads((tmp_path / "herd" / HERD_FILE).read_text())
    assert [s["name"] for s in herd["students"]] == ["a", "b"]
    for s in herd["students"]:
        assert s["path"] == s["name"] and (tmp_path / "herd" / s["path"] / "model.safetensors").is_file()
        assert (s["family"], s["prompt_format"], s["base"]) == ("causal", "alpaca", str(tiny_models["gpt2"]))
        assert s["training"]["steps"] == 1 and s["args"]["max_steps"] == 1
    assert herd == herd_index(tmp_path / "herd") and herd["skipped"] == []


def test_herd_index_is_rebuilt_from_the_student_folders(tmp_path):
    out = tmp_path / "herd"

    def student(folder, **meta):
        (out / folder).mkdir(parents=True)
        (out / folder / "lamini.json").write_text(json.dumps(
            {"family": "causal", "prompt_format": "chat", "role": "student", "student": folder, "base": "gpt2",
             "training": {"steps": 3}, "args": {"epochs": 1}, **meta}))

    student("smol")
    student("t5", family="seq2seq", prompt_format="raw")
    student(".tmp-123-abcd-smol")  # a save in progress (or killed): not a student yet
    (out / ".work" / "smol").mkdir(parents=True)
    (out / "notes").mkdir()
    (out / "broken").mkdir()
    (out / "broken" / "lamini.json").write_text("{not json")
    (out / HERD_FILE).write_text('[{"student": "stale"}]')  # the old, partial shape

    idx = write_herd_index(out)
    assert idx == json.loads((out / HERD_FILE).read_text())
    assert idx["format_version"] == 1
    assert [(s["name"], s["family"], s["prompt_format"]) for s in idx["students"]] == [
        ("smol", "causal", "chat"), ("t5", "seq2seq", "raw")]
    assert idx["students"][0] == {"name": "smol", "path": "smol", "family": "causal", "prompt_format": "chat",
                                  "base": "gpt2", "training": {"steps": 3}, "args": {"epochs": 1}}
    assert [s["path"] for s in idx["skipped"]] == ["broken"] and "lamini.json" in idx["skipped"][0]["reason"]
    assert herd_index(tmp_path / "nothing-here") == {"format_version": 1, "students": [], "skipped": []}


def test_dry_run_refuses_a_missing_dataset(tmp_path, tiny_models):
    missing = tmp_path / "runs" / "data" / "dataset.parquet"
    recipe = _recipe_file(tmp_path, tiny_models["gpt2"], dataset=missing)
    line = _one_line_error(_lamini("train", recipe, "--dry-run"))
    assert str(missing) in line and "lamini data run" in line
    good = _recipe_file(tmp_path, tiny_models["gpt2"])
    r = _lamini("train", good, "--dry-run")
    assert r.exit_code == 0 and "s: base=" in r.output and "data.jsonl" in r.output, r.output
    assert not (tmp_path / "herd").exists()  # a dry run writes nothing


def test_dry_run_checks_the_dataset_columns(tmp_path, tiny_models):
    data = tmp_path / "pc.parquet"
    pq.write_table(pa.table({"prompt": ["a"], "completion": ["b"]}), data)
    recipe = _recipe_file(tmp_path, tiny_models["gpt2"], dataset=data)
    assert "missing column(s) instruction, response" in _one_line_error(_lamini("train", recipe, "--dry-run"))


@pytest.mark.parametrize("steps", [0, -3])
def test_max_steps_is_validated(tmp_path, tiny_models, steps):
    recipe = _recipe_file(tmp_path, tiny_models["gpt2"])
    line = _one_line_error(_lamini("train", recipe, "--max-steps", steps, "--dry-run"))
    assert "--max-steps" in line and f"got {steps}" in line


def _bad_parquet_files(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"instruction": [p["instruction"] for p in PAIRS],
                             "response": [p["response"] for p in PAIRS]}), good)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.parquet"
    text.write_text("instruction,response\na,b\n")
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    return good, [truncated, text, empty]


def test_a_file_that_is_not_parquet_is_one_line(tmp_path, tiny_models):
    good, bad = _bad_parquet_files(tmp_path)
    assert len(load_pairs(str(good))) == len(PAIRS)
    recipe = _recipe_file(tmp_path, tiny_models["gpt2"])
    for f in bad:
        with pytest.raises(LaminiError, match="not a readable Parquet file"):
            load_pairs(str(f))
        for extra in ([], ["--dry-run"]):
            line = _one_line_error(_lamini("train", recipe, "--dataset", f, "--max-steps", 1, *extra))
            assert str(f) in line and "not a readable Parquet file" in line and "lamini data run" in line


def test_bad_jsonl_rows_are_one_line(tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps({"instruction": "caf\u00e9", "response": "x"}).encode("latin-1").replace(b"\\u00e9",
                                                                                                       b"\xe9") + b"\n")
    with pytest.raises(LaminiError, match="not UTF-8"):
        load_pairs(str(latin))
    lists = tmp_path / "lists.jsonl"
    lists.write_text('["instruction", "response"]\n')
    with pytest.raises(LaminiError, match="line 1 is not a JSON object"):
        load_pairs(str(lists))
