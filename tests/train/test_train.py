import json

import pytest
import torch

from lamini_serve.errors import LaminiError
from lamini_serve.models import ModelSpec
from lamini_serve.prompts import PromptFormat
from lamini_serve.train.data import IGNORE, CausalCollator, encode_causal, encode_seq2seq, load_pairs, pack
from lamini_serve.train.recipe import parse_recipe
from lamini_serve.train.students import evenly_spaced, student_from_teacher
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


def test_students_cut_from_the_teacher(tiny_models):
    from transformers import AutoModelForCausalLM, LlamaConfig

    assert evenly_spaced(30, 6) == [0, 6, 12, 17, 23, 29]
    assert evenly_spaced(30, 12)[0] == 0 and evenly_spaced(30, 12)[-1] == 29 and len(evenly_spaced(30, 12)) == 12
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
                      num_key_value_heads=2)
    teacher = AutoModelForCausalLM.from_config(cfg)
    student, keep = student_from_teacher(teacher, 3)
    assert keep == [0, 2, 4] and student.config.num_hidden_layers == 3
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


def test_word_level_kd_trains_against_a_teacher(tmp_path, tiny_tokenizer, monkeypatch):
    from lamini_serve.testing import make_tiny_model

    teacher = make_tiny_model("llama", tmp_path / "teacher", tokenizer=tiny_tokenizer, wide_init=False, seed=1)
    base = make_tiny_model("llama", tmp_path / "student", tokenizer=tiny_tokenizer, wide_init=False)
    r = _recipe(tmp_path, base, max_steps=8)
    r.teacher = str(teacher)
    r.students[0].kd = parse_recipe({"dataset": "d", "output": "o", "students": [
        {"name": "k", "base": "b", "kd": {"weight": 0.5, "divergence": "reverse_kl"}}]}).students[0].kd
    s = train_student(r, r.students[0], log=lambda m: None)
    assert s["kd"]["divergence"] == "reverse_kl" and s["steps"] == 8


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
