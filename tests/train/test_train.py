import json

import pytest
import torch

from lamini_serve.errors import LaminiError
from lamini_serve.models import ModelSpec
from lamini_serve.prompts import PromptFormat
from lamini_serve.train.data import (
    IGNORE,
    CausalCollator,
    encode_causal,
    encode_seq2seq,
    load_pairs,
    pack,
)
from lamini_serve.train.recipe import parse_recipe
from lamini_serve.train.students import evenly_spaced, kept_layers, student_from_teacher
from lamini_serve.train.trainer import grad_accum, train_student, use_bf16

PAIRS = [{"instruction": f"Name fact {i} about the sea.", "response": f"The sea fact {i} is wet and blue."} for i in range(24)]


def test_loss_mask_covers_exactly_the_answer(tiny_models, tiny_tokenizer):
    for kind in ("gpt2", "llama"):
        spec = ModelSpec.resolve(tiny_models[kind])
        [ex] = encode_causal(PAIRS[:1], spec, tiny_tokenizer, 256)
        answer = [t for t in ex["labels"] if t != IGNORE]
        n_prompt = ex["labels"].index(answer[0])
        assert all(t == IGNORE for t in ex["labels"][:n_prompt])
        assert ex["input_ids"][n_prompt:] == answer
        text = tiny_tokenizer.decode(answer)
        prefix = "\n" if spec.prompt_format is PromptFormat.ALPACA else ""
        assert text == prefix + PAIRS[0]["response"] + tiny_tokenizer.eos_token
        assert tiny_tokenizer.decode(ex["input_ids"][:n_prompt]) == spec.prompt(PAIRS[0]["instruction"], tiny_tokenizer)


def test_seq2seq_examples(tiny_models, tiny_tokenizer):
    spec = ModelSpec.resolve(tiny_models["t5"])
    [ex] = encode_seq2seq(PAIRS[:1], spec, tiny_tokenizer, 64)
    assert tiny_tokenizer.decode(ex["input_ids"]) == PAIRS[0]["instruction"]
    assert tiny_tokenizer.decode(ex["labels"]) == PAIRS[0]["response"] + tiny_tokenizer.eos_token


def test_answers_cut_at_the_token_limit_get_no_eos(tmp_path, tiny_models, tiny_tokenizer):
    rows = [{"instruction": "Say a lot.", "response": "It goes on and on and", "finish_reason": "length"},
            {"instruction": "Say a little.", "response": "Done.", "finish_reason": "stop"}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cut, whole = load_pairs(str(data))
    assert cut["truncated"] and not whole["truncated"]
    eos = tiny_tokenizer.eos_token_id
    for kind, encode in (("llama", encode_causal), ("gpt2", encode_causal), ("t5", encode_seq2seq)):
        a, b = encode([cut, whole], ModelSpec.resolve(tiny_models[kind]), tiny_tokenizer, 64)
        assert a["labels"][-1] != eos and tiny_tokenizer.decode(a["labels"][-3:]).endswith("on and"), kind
        assert b["labels"][-1] == eos, kind
    # an answer cut at max_length gets no EOS either, whatever the tokenizer appends
    [long] = encode_seq2seq([{"instruction": "Go on.", "response": "word " * 50}], ModelSpec.resolve(tiny_models["t5"]),
                            tiny_tokenizer, 8)
    assert len(long["labels"]) == 7 and eos not in long["labels"]


def test_cut_answers_can_be_left_out_of_training(tmp_path, tiny_models):
    rows = [{"instruction": f"Say {i}.", "response": f"Number {i} and", "finish_reason": "length" if i % 3 == 0 else "stop"}
            for i in range(12)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"dataset": str(data), "output": str(tmp_path / "herd"),
            "defaults": {"effective_batch_size": 4, "per_device_batch_size": 4, "max_length": 64, "max_steps": 1,
                         "eval_share": 0.0, "bf16": "false"},
            "students": [{"name": "s", "base": str(tiny_models["llama"])}]}
    logs = []
    keep = train_student(r := parse_recipe(base, "t.yaml"), r.students[0], log=logs.append)
    assert keep["examples"] == 12 and keep["truncated_answers"] == 4 and keep["dropped_cut_answers"] == 0
    base["defaults"]["cut_answers"] = "drop"
    drop = train_student(r := parse_recipe(base, "t.yaml"), r.students[0], log=logs.append)
    assert drop["examples"] == 8 and drop["truncated_answers"] == 0 and drop["dropped_cut_answers"] == 4
    assert any("4 answers cut" in m and "left out" in m for m in logs)


def test_bf16_where_the_hardware_has_it():
    assert use_bf16("false", cuda=True, gpu_bf16=True) is False
    assert use_bf16("auto", cuda=True, gpu_bf16=True) is True
    assert use_bf16("auto", cuda=True, gpu_bf16=False) is False  # a T4 or V100 trains in fp32
    with pytest.raises(LaminiError, match="no bfloat16"):
        use_bf16("true", cuda=True, gpu_bf16=False)
    assert use_bf16("auto", cuda=False, cpu_bf16=True) is True  # AVX-512 BF16 / AMX
    assert use_bf16("auto", cuda=False, cpu_bf16=False) is False  # emulated bf16 is slower than fp32
    assert use_bf16("true", cuda=False, cpu_bf16=False) is True


def test_native_bf16_is_read_from_the_cpu_flags():
    from lamini_serve.hardware import cpu_native_bf16

    assert cpu_native_bf16({"avx512f", "avx512_bf16"}) and cpu_native_bf16({"amx_bf16", "avx2"})
    assert not cpu_native_bf16({"avx512f", "avx512_vnni", "avx2"}) and not cpu_native_bf16(set())


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_packing_keeps_examples_apart(tiny_models, tiny_tokenizer, kind):
    from transformers import AutoModelForCausalLM

    spec = ModelSpec.resolve(tiny_models[kind])
    model = AutoModelForCausalLM.from_pretrained(tiny_models[kind]).eval()
    exs = encode_causal(PAIRS[:5], spec, tiny_tokenizer, 256)
    rows = pack(exs, 256)
    assert len(rows) < len(exs)  # several examples share a row
    batch = CausalCollator(pad_id=tiny_tokenizer.pad_token_id)(rows)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits
        naive = model(input_ids=batch["input_ids"]).logits  # one causal sequence: attention crosses examples
    by_ids = {tuple(e["input_ids"]): e for e in exs}
    crossed = False
    for r, row in enumerate(rows):
        start = 0
        for n in row["seq_lens"]:
            ids = tuple(row["input_ids"][start:start + n])
            assert list(row["labels"][start:start + n]) == by_ids[ids]["labels"]  # labels stay with their example
            with torch.no_grad():
                alone = model(input_ids=torch.tensor([ids])).logits[0]
            assert torch.allclose(packed[r, start:start + n], alone, atol=1e-4)
            crossed |= start > 0 and not torch.allclose(naive[r, start:start + n], alone, atol=1e-4)
            start += n
    assert crossed, "without the mask a later example would see the earlier ones (the test would catch a leak)"


def test_collator_keeps_padding_out_of_the_loss_and_attention():
    collate = CausalCollator(pad_id=0)
    b = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]  # the student never learns to emit padding
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    b = collate([{"input_ids": [5, 6, 7, 8], "labels": [IGNORE, 6, 7, 8], "seq_lens": [3, 1]},
                 {"input_ids": [9, 10], "labels": [IGNORE, 10], "seq_lens": [2]}])
    assert b["labels"].tolist() == [[IGNORE, 6, 7, 8], [IGNORE, 10, IGNORE, IGNORE]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0], [0, 1, 0, 0]]
    allowed = (b["attention_mask"][:, 0] == 0).int().tolist()
    assert allowed[0] == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]]  # causal within each example
    assert allowed[1] == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]  # padding sees only itself


def test_students_cut_from_the_teacher(tiny_models):
    from transformers import AutoModelForCausalLM, LlamaConfig

    assert evenly_spaced(30, 6) == [0, 6, 12, 17, 23, 29]
    assert evenly_spaced(30, 12)[0] == 0 and evenly_spaced(30, 12)[-1] == 29 and len(evenly_spaced(30, 12)) == 12
    assert kept_layers(30, 6) == [0, 1, 2, 27, 28, 29]  # the default: the middle dropped as one block
    assert kept_layers(30, 7, "ends") == [0, 1, 2, 26, 27, 28, 29]
    assert kept_layers(30, 6, "spread") == evenly_spaced(30, 6)
    assert kept_layers(30, 3, "first") == [0, 1, 2]
    assert kept_layers(30, 3, [29, 0, 5]) == [0, 5, 29]
    for bad in ([0, 0, 1], [0, 1, 30], [0, 1]):
        with pytest.raises(LaminiError, match="init.keep"):
            kept_layers(30, 3, bad)
    with pytest.raises(LaminiError, match="init.keep"):
        kept_layers(30, 3, "middle")
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
                      num_key_value_heads=2)
    teacher = AutoModelForCausalLM.from_config(cfg)
    student, keep = student_from_teacher(teacher, 3, "spread")
    assert keep == [0, 2, 4] and student.config.num_hidden_layers == 3
    assert student_from_teacher(teacher, 3)[1] == [0, 3, 4]
    for new, old in enumerate(keep):
        for (n1, a), (n2, b) in zip(student.model.layers[new].state_dict().items(), teacher.model.layers[old].state_dict().items()):
            assert n1 == n2 and torch.equal(a, b)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)


def test_grad_accumulation_reaches_the_effective_batch():
    assert grad_accum(1024, 16, 8) == 8 and grad_accum(1024, 16, 1) == 64 and grad_accum(8, 16, 1) == 1


def _recipe(tmp_path, base, **args):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS * 2))
    defaults = {"effective_batch_size": 8, "per_device_batch_size": 8, "max_length": 64, "logging_steps": 1,
                "save_steps": 5, "eval_share": 0.0, "learning_rate": 3e-3, "bf16": "false", **args}
    return parse_recipe({"dataset": str(data), "output": str(tmp_path / "herd"), "defaults": defaults,
                         "students": [{"name": "s", "base": str(base)}]}, "test.yaml")


def _losses(path):
    return [json.loads(x)["loss"] for x in path.read_text().splitlines() if '"loss"' in x]


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_a_tiny_student_trains_and_its_loss_falls(tmp_path, tiny_tokenizer, kind):
    from lamini_serve.testing import make_tiny_model

    base = make_tiny_model(kind, tmp_path / "base", tokenizer=tiny_tokenizer, wide_init=False)
    r = _recipe(tmp_path, base, max_steps=20)
    s = train_student(r, r.students[0], log=lambda m: None)
    out = tmp_path / "herd" / "s"
    losses = _losses(out / "metrics.jsonl")
    assert s["steps"] == 20 and len(losses) == 20
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    meta = json.loads((out / "lamini.json").read_text())
    assert meta["prompt_format"] == ("chat" if kind == "llama" else "raw") and meta["role"] == "student"
    for f in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "training_curve.png"):
        assert (out / f).is_file(), f
    assert ModelSpec.resolve(out).prompt_format.value == meta["prompt_format"]


def test_bf16_mixed_precision_trains_on_the_cpu(tmp_path, tiny_tokenizer, monkeypatch):
    from lamini_serve.testing import make_tiny_model

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # restored after the test
    base = make_tiny_model("llama", tmp_path / "base", tokenizer=tiny_tokenizer, wide_init=False)
    r = _recipe(tmp_path, base, max_steps=12, bf16="true")
    s = train_student(r, r.students[0], log=lambda m: None)
    losses = _losses(tmp_path / "herd" / "s" / "metrics.jsonl")
    assert s["precision"] == "bf16 mixed" and s["answer_only_logits"]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    from safetensors import safe_open

    with safe_open(str(tmp_path / "herd" / "s" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}  # the fp32 master weights are saved
    assert "| precision | bf16 mixed |" in (tmp_path / "herd" / "s" / "README.md").read_text()
    # the next student of the same process, in fp32, really runs in fp32 (precision is read from the Trainer)
    (tmp_path / "b").mkdir()
    r2 = _recipe(tmp_path / "b", base, max_steps=2)
    assert train_student(r2, r2.students[0], log=lambda m: None)["precision"] == "fp32"


def test_resume_continues_from_the_saved_step(tmp_path, tiny_models):
    r = _recipe(tmp_path, tiny_models["gpt2"], max_steps=10)
    train_student(r, r.students[0], log=lambda m: None)
    r2 = _recipe(tmp_path, tiny_models["gpt2"], max_steps=14)
    s = train_student(r2, r2.students[0], resume=True, log=lambda m: None)
    assert s["steps"] == 14
    steps = [json.loads(x)["step"] for x in (tmp_path / "herd" / ".work" / "s" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in x]
    assert steps[:10] == list(range(1, 11)) and steps[10:] == [11, 12, 13, 14]


def _kd_spec(**kd):
    return parse_recipe({"dataset": "d", "output": "o", "students": [{"name": "k", "base": "b", "kd": kd}]}).students[0].kd


def _divergence_to(teacher, student, batch, kind="forward_kl"):
    """The student's divergence from the teacher on the answer tokens of `batch`."""
    from transformers import AutoModelForCausalLM

    from lamini_serve.train.kd import divergence

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s = AutoModelForCausalLM.from_pretrained(student).eval()(**inputs).logits
        t = AutoModelForCausalLM.from_pretrained(teacher).eval()(**inputs).logits
    return divergence(s[:, :-1], t[:, :-1], batch["labels"][:, 1:] != IGNORE, kind).item()


def test_word_level_kd_trains_against_a_teacher(tmp_path, tiny_tokenizer):
    from lamini_serve.testing import make_tiny_model

    teacher = make_tiny_model("llama", tmp_path / "teacher", tokenizer=tiny_tokenizer, wide_init=False, seed=1)
    base = make_tiny_model("llama", tmp_path / "student", tokenizer=tiny_tokenizer, wide_init=False)
    batch = CausalCollator(pad_id=tiny_tokenizer.pad_token_id)(
        encode_causal(PAIRS, ModelSpec.resolve(base), tiny_tokenizer, 64))
    after = {}
    for name, kd in (("kd", _kd_spec(weight=1.0, divergence="reverse_kl")), ("ce", None)):
        (tmp_path / name).mkdir()
        r = _recipe(tmp_path / name, base, max_steps=8)
        r.teacher = str(teacher)
        r.students[0].kd = kd
        s = train_student(r, r.students[0], log=lambda m: None)
        assert s["steps"] == 8 and (s["kd"] or {}).get("divergence") == (kd and "reverse_kl")
        after[name] = _divergence_to(teacher, tmp_path / name / "herd" / "s", batch, "reverse_kl")
    before = _divergence_to(teacher, base, batch, "reverse_kl")
    # The answers pull the student away from this random teacher; the KD term pulls it towards it.
    assert after["kd"] < 0.5 * before and after["kd"] < 0.5 * after["ce"], (before, after)


def test_kd_loss_is_the_weighted_mix_on_one_batch(tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, TrainingArguments

    from lamini_serve.testing import make_tiny_model
    from lamini_serve.train.data import ListDataset
    from lamini_serve.train.kd import divergence, kd_trainer_class

    teacher = make_tiny_model("llama", tmp_path / "teacher", tokenizer=tiny_tokenizer, seed=1)
    student = make_tiny_model("llama", tmp_path / "student", tokenizer=tiny_tokenizer)
    batch = CausalCollator(pad_id=tiny_tokenizer.pad_token_id)(
        pack(encode_causal(PAIRS[:6], ModelSpec.resolve(student), tiny_tokenizer, 128), 128))
    s_model = AutoModelForCausalLM.from_pretrained(student).eval()
    t_model = AutoModelForCausalLM.from_pretrained(teacher).eval()
    kd = _kd_spec(weight=0.3, divergence="jsd", temperature=2.0, beta=0.4)
    trainer = kd_trainer_class()(model=s_model, args=TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True,
                                                                       report_to=[]),
                                 train_dataset=ListDataset([]), teacher=t_model, kd=kd)
    got = trainer.compute_loss(s_model, dict(batch)).item()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        out = s_model(**batch)
        t_logits = t_model(**inputs).logits
    div = divergence(out.logits[:, :-1], t_logits[:, :-1], batch["labels"][:, 1:] != IGNORE, "jsd", 2.0, 0.4).item()
    assert div > 0.01 * out.loss.item()  # the two terms differ, so dropping either one shows
    assert got == pytest.approx(0.7 * out.loss.item() + 0.3 * div, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_cached_topk_kd_is_the_live_forward_kl_when_k_is_the_whole_vocabulary(tmp_path, tiny_tokenizer, temperature):
    """The cached targets line up with the packed batch's answer positions: with K = the
    vocabulary they carry the whole distribution, and the loss is the live teacher's."""
    from transformers import AutoModelForCausalLM, TrainingArguments

    from lamini_serve.testing import make_tiny_model
    from lamini_serve.train.data import ListDataset
    from lamini_serve.train.kd import cached_kd_trainer_class, kd_trainer_class, teacher_targets

    teacher = make_tiny_model("llama", tmp_path / "teacher", tokenizer=tiny_tokenizer, seed=1)
    student = make_tiny_model("llama", tmp_path / "student", tokenizer=tiny_tokenizer)
    s_model = AutoModelForCausalLM.from_pretrained(student).eval()
    t_model = AutoModelForCausalLM.from_pretrained(teacher).eval()
    rows = encode_causal(PAIRS[:6], ModelSpec.resolve(student), tiny_tokenizer, 128)
    vocab = t_model.config.vocab_size
    args = TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True, report_to=[])
    live = kd_trainer_class()(model=s_model, args=args, train_dataset=ListDataset([]), teacher=t_model,
                              kd=_kd_spec(weight=0.3, temperature=temperature, top_k=0))
    plain = CausalCollator(pad_id=tiny_tokenizer.pad_token_id)(pack(rows, 128, seed=1))
    want = live.compute_loss(s_model, dict(plain)).item()
    got = {}
    for k in (vocab, 3):
        targets = teacher_targets(t_model, rows, top_k=k, temperature=temperature)
        assert [len(t[0]) for t in targets] == [sum(x != IGNORE for x in r["labels"][1:]) for r in rows]
        batch = CausalCollator(pad_id=tiny_tokenizer.pad_token_id)(
            pack([r | {"kd": [t]} for r, t in zip(rows, targets)], 128, seed=1))
        assert torch.equal(batch["input_ids"], plain["input_ids"])
        cached = cached_kd_trainer_class()(model=s_model, args=args, train_dataset=ListDataset([]),
                                           kd=_kd_spec(weight=0.3, temperature=temperature, top_k=k))
        got[k] = cached.compute_loss(s_model, dict(batch)).item()
    assert got[vocab] == pytest.approx(want, rel=2e-3)
    assert got[3] != pytest.approx(want, rel=2e-3)  # 3 of the teacher's tokens are not its distribution


def test_cached_kd_trains_and_its_targets_are_made_once(tmp_path, tiny_tokenizer):
    from lamini_serve.testing import make_tiny_model

    teacher = make_tiny_model("llama", tmp_path / "teacher", tokenizer=tiny_tokenizer, wide_init=False, seed=1)
    base = make_tiny_model("llama", tmp_path / "student", tokenizer=tiny_tokenizer, wide_init=False)
    batch = CausalCollator(pad_id=tiny_tokenizer.pad_token_id)(
        encode_causal(PAIRS, ModelSpec.resolve(base), tiny_tokenizer, 64))
    r = _recipe(tmp_path, base, max_steps=8)
    r.teacher = str(teacher)
    vocab = len(tiny_tokenizer)  # this random teacher is nearly flat: its top 64 would not be its distribution
    r.students[0].kd = _kd_spec(weight=1.0, top_k=vocab)
    logs = []
    s = train_student(r, r.students[0], log=logs.append)
    assert s["kd"]["top_k"] == vocab and any("once" in m for m in logs)
    after = _divergence_to(teacher, tmp_path / "herd" / "s", batch)
    assert after < 0.5 * _divergence_to(teacher, base, batch), after
    logs.clear()
    train_student(r, r.students[0], log=logs.append)
    assert any("targets from" in m for m in logs), logs  # the second student reads them back


def test_pack_fills_rows_first_fit_decreasing_within_max_length():
    sizes = [7, 5, 4, 3, 3, 2, 1, 9]
    exs = [{"input_ids": [i] * n, "labels": [100 + i] * n} for i, n in enumerate(sizes)]
    rows = pack(exs, 10, seed=3)
    seen = []
    for row in rows:
        assert len(row["input_ids"]) == len(row["labels"]) == sum(row["seq_lens"]) <= 10
        start = 0
        for n in row["seq_lens"]:
            ids, labels = row["input_ids"][start:start + n], row["labels"][start:start + n]
            assert ids == [ids[0]] * n and labels == [100 + ids[0]] * n  # whole, with its own labels
            seen.append(ids[0])
            start += n
    assert sorted(seen) == list(range(len(sizes)))  # each example exactly once
    assert len(rows) == 4  # 34 tokens in rows of 10: 9+1, 7+3, 5+4, 3+2 (no fewer is possible)


def test_kd_refuses_a_different_vocabulary(tmp_path, tiny_tokenizer):
    from lamini_serve.errors import LaminiError
    from lamini_serve.testing import build_tokenizer, make_tiny_model

    teacher = make_tiny_model("llama", tmp_path / "teacher", tokenizer=build_tokenizer(vocab_size=400))
    base = make_tiny_model("llama", tmp_path / "student", tokenizer=tiny_tokenizer)
    r = _recipe(tmp_path, base, max_steps=2)
    r.teacher = str(teacher)
    r.students[0].kd = parse_recipe({"dataset": "d", "output": "o", "students": [
        {"name": "k", "base": "b", "kd": {}}]}).students[0].kd
    with pytest.raises(LaminiError, match="needs the teacher's vocabulary"):
        train_student(r, r.students[0], log=lambda m: None)


def test_out_of_memory_is_one_clear_line(tmp_path, tiny_models, monkeypatch):
    from transformers import Trainer

    from lamini_serve.errors import LaminiError

    def boom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "train", boom)
    r = _recipe(tmp_path, tiny_models["gpt2"], max_steps=2)
    with pytest.raises(LaminiError, match="does not fit in memory.*per_device_batch_size.*gradient_checkpointing"):
        train_student(r, r.students[0], log=lambda m: None)


def test_dataset_without_the_columns(tmp_path, tiny_models):
    from lamini_serve.errors import LaminiError

    r = _recipe(tmp_path, tiny_models["gpt2"], max_steps=2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    r.dataset = str(bad)
    with pytest.raises(LaminiError, match="missing column.*instruction, response"):
        train_student(r, r.students[0], log=lambda m: None)


def test_tensorboard_events_are_written(tmp_path, tiny_models):
    pytest.importorskip("tensorboard")
    r = _recipe(tmp_path, tiny_models["gpt2"], max_steps=3)
    train_student(r, r.students[0], log=lambda m: None)
    events = list((tmp_path / "herd" / ".work" / "s" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
