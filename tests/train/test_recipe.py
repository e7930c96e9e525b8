import pytest

from lamini_serve.errors import LaminiError
from lamini_serve.train.recipe import load_recipe, parse_recipe, shipped_recipes


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_validates(name):
    r = load_recipe(name)
    assert r.students and len({s.name for s in r.students}) == len(r.students)


def test_paper_recipe_has_the_papers_students():
    r = load_recipe("lamini-paper")
    bases = {s.base for s in r.students}
    assert len(r.students) == 15
    assert {"google/flan-t5-small", "google-t5/t5-large", "cerebras/Cerebras-GPT-1.3B", "openai-community/gpt2-xl",
            "EleutherAI/gpt-neo-125m"} <= bases
    assert all(s.args.epochs == 5 and s.args.effective_batch_size == 1024 and s.args.warmup_ratio == 0.03 for s in r.students)


BASE = {"dataset": "d.parquet", "output": "out", "students": [{"name": "a", "base": "gpt2"}]}


@pytest.mark.parametrize(
    "change, match",
    [
        ({"epochz": 3}, "unknown key.*epochz"),
        ({"students": [{"name": "a", "base": "gpt2", "lr": 1}]}, "student.*unknown key.*lr"),
        ({"defaults": {"epochs": "five"}}, "defaults.epochs: expected a number"),
        ({"defaults": {"per_device_batch_size": 64, "effective_batch_size": 32}}, "larger than effective_batch_size"),
        ({"students": [{"name": "a", "base": "gpt2", "learning_rate": -1}]}, "student a: learning_rate"),
        ({"students": [{"name": "a", "base": "gpt2", "init": {"from_teacher": True, "layers": 2}}]}, "not both"),
        ({"students": [{"name": "a", "init": {"layers": 2}}]}, "only applies with init.from_teacher"),
        ({"students": [{"name": "a", "init": {"from_teacher": True, "layers": 2, "keep": "middle"}}]}, "init.keep must be"),
        ({"students": [{"name": "a", "init": {"from_teacher": True, "layers": 2, "keep": [0, 1, 2]}}]}, "lists 3 layers"),
        ({"students": [{"name": "a", "base": "gpt2"}, {"name": "a", "base": "gpt2"}]}, "used twice"),
        ({"students": [{"name": "a", "base": "gpt2", "kd": {"weight": 2}}]}, "kd.weight"),
        ({"students": [{"name": "a", "base": "gpt2", "kd": {"divergence": "jsd", "top_k": 8}}]}, "set kd.top_k: 0"),
        ({"students": []}, "non-empty list"),
    ],
)
def test_bad_recipes_name_the_problem(change, match):
    with pytest.raises(LaminiError, match=match):
        parse_recipe({**BASE, **change}, "r.yaml")


def test_overrides_and_yaml_floats(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("dataset: d\noutput: o\ndefaults: {epochs: 2}\nstudents:\n  - {name: s, base: gpt2, learning_rate: 5e-4}\n")
    r = load_recipe(p)
    assert r.students[0].args.learning_rate == 5e-4 and r.students[0].args.epochs == 2


def test_broken_yaml_names_the_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("dataset: d\nstudents: [\n")
    with pytest.raises(LaminiError, match="not valid YAML at line"):
        load_recipe(p)


def test_replace_validates_like_the_recipe():
    import dataclasses

    from lamini_serve.train.recipe import KDSpec, TrainArgs

    args = parse_recipe(BASE, "r.yaml").students[0].args
    for change, match in (({"max_steps": 0}, "max_steps must be >= 1 .or -1.*got 0"),
                          ({"per_device_batch_size": 4096}, "larger than effective_batch_size"),
                          ({"epochs": 0}, "epochs must be > 0"), ({"logging_steps": 0}, "logging_steps"),
                          ({"save_steps": -1}, "save_steps")):
        with pytest.raises(LaminiError, match=match):
            dataclasses.replace(args, **change)
    assert dataclasses.replace(args, max_steps=5).max_steps == 5
    with pytest.raises(LaminiError, match="kd.weight"):
        dataclasses.replace(KDSpec(), weight=2)
    with pytest.raises(LaminiError, match="max_length"):
        TrainArgs(max_length=8)
