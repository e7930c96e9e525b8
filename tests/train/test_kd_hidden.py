"""Hidden-state KD (kd.hidden): the distance, the cached teacher states through packing, training, validation."""

import json

import pytest
import torch

from lamini_serve.errors import LaminiError
from lamini_serve.models import ModelSpec
from lamini_serve.train.data import CausalCollator, encode_causal, pack
from lamini_serve.train.kd import hidden_distance, junctions
from lamini_serve.train.recipe import KDSpec, parse_recipe

PAIRS = [{"instruction": f"Name fact {i} about the sea.", "response": f"The sea fact {i} is wet and blue."}
         for i in range(24)]


def test_distance_is_zero_for_equal_states_and_relative_per_token():
    t = torch.randn(7, 16)
    assert hidden_distance(t, t.clone()).item() == 0.0
    for c in (0.0, 0.5, 2.0):
        assert hidden_distance(c * t, t).item() == pytest.approx((c - 1) ** 2, rel=1e-5)
    s = t + 0.1 * torch.randn(7, 16)
    assert hidden_distance(1000 * s, 1000 * t).item() == pytest.approx(hidden_distance(s, t).item(), rel=1e-4)
    # A token with a massive norm (the teacher's first token) weighs as much as any other: one
    # token at zero and the rest exact is 1/7 whichever token it is (over all tokens at once it
    # would be about 1 for the big one and about 0 for another).
    big = t.clone()
    big[0] *= 1000
    off_big, off_small = big.clone(), big.clone()
    off_big[:1] = 0
    off_small[1:2] = 0
    assert hidden_distance(off_big, big).item() == pytest.approx(1 / 7, rel=1e-5)
    assert hidden_distance(off_small, big).item() == pytest.approx(1 / 7, rel=1e-5)
    assert hidden_distance(t[:0], t[:0]).item() == 0.0  # no tokens: nothing to match, not NaN


def test_junctions_are_the_blocks_after_a_gap():
    assert junctions([0, 1, 2, 3, 4, 5, 24, 25, 26, 27, 28, 29]) == [(6, 24)]
    assert junctions([0, 1, 2, 27, 28, 29]) == [(3, 27)]
    assert junctions([0, 6, 12, 17, 23, 29]) == [(1, 6), (2, 12), (3, 17), (4, 23), (5, 29)]
    assert junctions([0, 1, 2]) == [] and junctions([3, 4]) == []  # block 0 reads the embeddings


def _teacher(tmp_path, tok, layers=5, **kw):
    from lamini_serve.testing import make_tiny_model

    return make_tiny_model("llama", tmp_path / "teacher", tokenizer=tok, layers=layers, **kw)


def test_cached_hidden_targets_are_the_teachers_states_through_packing(tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from lamini_serve.train.kd import cached_teacher_targets

    path = _teacher(tmp_path, tiny_tokenizer)
    teacher = AutoModelForCausalLM.from_pretrained(path).eval()
    rows = encode_causal(PAIRS[:7], ModelSpec.resolve(path), tiny_tokenizer, 128)
    logs, loads = [], []

    def load():
        loads.append(1)
        return teacher

    def cached(layers):
        return cached_teacher_targets(tmp_path / "work", str(path), load, rows, 3, 1.0, False, logs.append,
                                      layers=layers)

    targets = cached([3, 1])
    assert len(loads) == 1 and len(list((tmp_path / "work").glob("kd-hidden-*.npy"))) == 2
    assert [t[2].shape for t in targets] == [(len(r["input_ids"]), 2, 64) for r in rows]
    again = cached([1, 3])  # read back, in the order asked for
    assert len(loads) == 1 and any("hidden states entering block(s) 1, 3 from" in m for m in logs)
    for a, b in zip(targets, again):
        assert (a[2][:, ::-1] == b[2]).all() and (a[0] == b[0]).all()
    third = cached([1, 2])  # only block 2 is missing: one pass for it (no head), the top-k file reused
    assert len(loads) == 2 and "block(s) 2 at every token" in logs[-1] and "top-3" not in logs[-1]
    for r, t in zip(rows, third):
        with torch.no_grad():
            alone = teacher(input_ids=torch.tensor([r["input_ids"]]), output_hidden_states=True).hidden_states
        assert torch.allclose(torch.from_numpy(t[2][:, 1]).float(), alone[2][0], rtol=2e-3, atol=2e-3)

    rows_kd = [r | {"kd": [t]} for r, t in zip(rows, targets)]
    packed = pack(rows_kd, 128, seed=1)
    assert any(len(r["seq_lens"]) > 1 for r in packed)  # examples share rows
    for batch_rows in (packed, rows_kd):  # packed, and one example per padded row
        batch = CausalCollator(pad_id=tiny_tokenizer.pad_token_id)(batch_rows)
        assert batch["kd_real"].sum() == batch["kd_hidden"].shape[0] == sum(len(r["input_ids"]) for r in rows)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        with torch.no_grad():
            live = teacher(**inputs, output_hidden_states=True).hidden_states
        for j, layer in enumerate((3, 1)):
            want = live[layer][batch["kd_real"]]
            got = batch["kd_hidden"][:, j].float()
            assert torch.allclose(got, want, rtol=2e-3, atol=2e-3), (layer, (got - want).abs().max())
            other = live[2][batch["kd_real"]]
            assert not torch.allclose(got, other, rtol=2e-3, atol=2e-3)  # the layers differ: a wrong index shows


def _recipe(tmp_path, teacher, student: dict, kd: dict | None, **args):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS * 2))
    defaults = {"effective_batch_size": 8, "per_device_batch_size": 8, "max_length": 64, "logging_steps": 1,
                "save_steps": 50, "eval_share": 0.0, "learning_rate": 3e-3, "bf16": "false", **args}
    return parse_recipe({"dataset": str(data), "output": str(tmp_path / "herd"), "teacher": str(teacher),
                         "defaults": defaults, "students": [{"name": "s", **student, **({"kd": kd} if kd else {})}]},
                        "test.yaml")


def _distance(student, teacher, batch, pairs):
    """H of `student` against the live teacher on `batch`, at (student block, teacher block) `pairs`."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        s = student(**inputs, output_hidden_states=True).hidden_states
        t = teacher(**inputs, output_hidden_states=True).hidden_states
    return sum(hidden_distance(s[i][real], t[k][real]).item() for i, k in pairs) / len(pairs)


def test_training_with_hidden_kd_lowers_the_distance(tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from lamini_serve.train.students import student_from_teacher
    from lamini_serve.train.trainer import train_student

    path = _teacher(tmp_path, tiny_tokenizer, wide_init=False, seed=1)
    teacher = AutoModelForCausalLM.from_pretrained(path).eval()
    start, kept = student_from_teacher(teacher, 2)
    assert kept == [0, 4] and junctions(kept) == [(1, 4)]
    batch = CausalCollator(pad_id=tiny_tokenizer.pad_token_id)(
        encode_causal(PAIRS, ModelSpec.resolve(path), tiny_tokenizer, 64))
    before = _distance(start.eval(), teacher, batch, [(1, 4)])
    after, logged = {}, {}
    for name, hidden in (("hidden", 3.0), ("plain", 0.0)):
        (tmp_path / name).mkdir()
        r = _recipe(tmp_path / name, path, {"init": {"from_teacher": True, "layers": 2}},
                    {"weight": 0.5, "top_k": 8, "hidden": hidden}, max_steps=12)
        logs = []
        s = train_student(r, r.students[0], log=logs.append)
        trained = AutoModelForCausalLM.from_pretrained(tmp_path / name / "herd" / "s").eval()
        after[name] = _distance(trained, teacher, batch, [(1, 4)])
        metrics = [json.loads(x) for x in (tmp_path / name / "herd" / ".work" / "s" / "metrics.jsonl").read_text()
                   .splitlines() if '"loss"' in x]
        logged[name] = [m.get("kd_hidden") for m in metrics]
        if hidden:
            assert s["kd"]["hidden"] == 3.0 and s["kd"]["junctions"] == [[1, 4]]
            assert any("block 1 (teacher block 4)" in m for m in logs)
            assert list((tmp_path / name / "herd" / ".work").glob("kd-hidden-*-4.npy"))
    assert logged["plain"] == [None] * 12 and None not in logged["hidden"]
    assert logged["hidden"][0] == pytest.approx(before, rel=0.05)  # what the trainer computes is this distance
    assert after["hidden"] < 0.5 * before and after["hidden"] < 0.5 * after["plain"], (before, after)


def test_hidden_kd_is_refused_where_it_cannot_apply(tmp_path, tiny_tokenizer, tiny_models):
    from lamini_serve.train.trainer import train_student

    with pytest.raises(LaminiError, match=r"kd.hidden must be >= 0, got -1"):
        KDSpec(hidden=-1.0)
    with pytest.raises(LaminiError, match=r"kd.hidden must be >= 0"):
        KDSpec(hidden=float("nan"))
    for kd in ({"hidden": 1.0, "top_k": 0}, {"hidden": 1.0, "divergence": "jsd"}):
        with pytest.raises(LaminiError, match=r"student s: kd.hidden needs the teacher's cached targets"):
            _recipe(tmp_path, "t", {"base": "b"}, kd)
    for student in ({"base": "b"}, {"init": {"from_config": {"model_type": "t5"}}}):
        with pytest.raises(LaminiError, match=r"^test.yaml: student s: kd.hidden .* needs init.from_teacher"):
            _recipe(tmp_path, "t", student, {"hidden": 1.0})
    assert _recipe(tmp_path, "t", {"base": "b"}, {"hidden": 0.0}).students[0].kd.hidden == 0.0

    path = _teacher(tmp_path, tiny_tokenizer, layers=4)
    r = _recipe(tmp_path, path, {"init": {"from_teacher": True, "layers": 2, "keep": "first"}}, {"hidden": 1.0},
                max_steps=1)
    with pytest.raises(LaminiError, match=r"^s: kd.hidden .* \[0, 1\] has none"):
        train_student(r, r.students[0], log=lambda m: None)
    # set on a base student past the recipe's check (as a script may): refused when it is built
    r = _recipe(tmp_path, tiny_models["llama"], {"base": str(tiny_models["llama"])}, {"weight": 0.5}, max_steps=1)
    r.students[0].kd = KDSpec(hidden=1.0)
    with pytest.raises(LaminiError, match=r"^s: kd.hidden .* needs init.from_teacher"):
        train_student(r, r.students[0], log=lambda m: None)


def test_the_live_teacher_refuses_hidden_kd(tmp_path, tiny_models):
    from transformers import AutoModelForCausalLM, TrainingArguments

    from lamini_serve.train.data import ListDataset
    from lamini_serve.train.kd import kd_trainer_class

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    kd = KDSpec(top_k=0)
    kd.hidden = 1.0  # past KDSpec's own check
    with pytest.raises(LaminiError, match="kd.hidden needs the teacher's cached targets"):
        kd_trainer_class()(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]),
                           train_dataset=ListDataset([]), teacher=model, kd=kd)
