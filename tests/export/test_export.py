"""`lamini export` on tiny models of both families, through real optimum and ONNX Runtime."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from lamini_serve.checkpoint import onnx_file
from lamini_serve.cli import cli
from lamini_serve.engines.torch_engine import SamplingParams, TorchEngine
from lamini_serve.errors import LaminiError
from lamini_serve.export.exporter import ExportOptions, checkpoint_sha256, export_model
from lamini_serve.export.isa import resolve_isa, supported_isas
from lamini_serve.models import ModelSpec
from lamini_serve.engines.ort_engine import OrtEngine

PROMPTS = ["Give three tips for staying healthy.", "hi", "Write a haiku about the sea and the salt in the wind at dusk."]
KINDS = ("llama", "gpt2", "t5")


@pytest.fixture(scope="session")
def exports(tiny_models, tmp_path_factory):
    """{kind: export folder} with int8 + fp32 variants and a 3-prompt report: optimum's format
    (the fused format, the default for llama, is tested in test_fused.py)."""
    root = tmp_path_factory.mktemp("exports")
    opts = ExportOptions(format="onnx")
    return {k: (export_model(str(tiny_models[k]), root / k, opts, report_prompts=3), root / k)[1] for k in KINDS}


def _convs(prompts=PROMPTS):
    return [[{"role": "user", "content": p}] for p in prompts]


@pytest.mark.parametrize("kind", KINDS)
def test_fp32_export_answers_exactly_as_pytorch(kind, tiny_models, exports):
    params = SamplingParams(max_new_tokens=12, repetition_penalty=1.0)
    torch_eng = TorchEngine(ModelSpec.resolve(tiny_models[kind]), device="cpu", dtype="float32")
    want = [torch_eng.generate([c], params)[0] for c in _convs()]  # one by one: no padding involved
    ort_eng = OrtEngine(ModelSpec.resolve(exports[kind]), variant="fp32")
    got = ort_eng.generate(_convs(), params)  # one padded batch
    assert [g.text for g in got] == [w.text for w in want]
    assert [g.completion_tokens for g in got] == [w.completion_tokens for w in want]
    assert [g.finish_reason for g in got] == [w.finish_reason for w in want]
    bound = OrtEngine(ModelSpec.resolve(exports[kind]), variant="fp32", io_binding=True)
    assert not ort_eng.io_binding and bound.io_binding  # off by default on the CPU
    assert [g.text for g in bound.generate(_convs(), params)] == [w.text for w in want]


@pytest.mark.parametrize("kind", KINDS)
def test_optimum_loads_the_folder_and_agrees_with_our_loop(kind, exports):
    from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForSeq2SeqLM

    folder = exports[kind]
    spec = ModelSpec.resolve(folder)
    eng = OrtEngine(spec)  # the default variant: int8
    tok = eng.tokenizer
    ids = eng.encode_texts([eng.prompt_text(_convs()[0][0:1])])[0]
    ours = eng.generate_ids([ids], SamplingParams(max_new_tokens=8, repetition_penalty=1.0))[0]
    cls = ORTModelForSeq2SeqLM if kind == "t5" else ORTModelForCausalLM
    model = cls.from_pretrained(folder)
    import torch

    x = torch.tensor([ids])
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False,
                         eos_token_id=eng.eos_ids, pad_token_id=tok.pad_token_id)
    theirs = out[0, len(ids):] if kind != "t5" else out[0, 1:]
    assert ours == theirs.tolist()[:len(ours)]


def test_int8_is_smaller_loads_and_answers_through_lamini_chat(exports):
    for kind in KINDS:
        folder = exports[kind]
        manifest = json.loads((folder / "export.json").read_text())
        assert manifest["variants"]["int8"]["bytes"] < manifest["variants"]["fp32"]["bytes"]
        for graph in manifest["quantization"]["graphs"].values():  # every weight matrix went int8
            assert graph["quantized_matmuls"] >= 1 and graph["fp32_matmuls_left"] == 0
        r = CliRunner().invoke(cli, ["chat", str(folder), "-p", "hello there", "--max-new-tokens", "6",
                                     "--repetition-penalty", "1.0"])
        assert r.exit_code == 0, r.output
        # the answer printed is the int8 graph's own greedy answer, not just some output
        int8 = OrtEngine(ModelSpec.resolve(folder))
        [expected] = int8.generate(_convs(["hello there"]), SamplingParams(max_new_tokens=6, repetition_penalty=1.0))
        assert expected.text and r.stdout.strip() == expected.text


def test_chat_picks_a_variant_and_threads(tiny_models, exports):
    args = ["-p", "hello there", "--max-new-tokens", "6", "--repetition-penalty", "1"]
    torch_out = CliRunner().invoke(cli, ["chat", str(tiny_models["llama"]), *args])
    fp32_out = CliRunner().invoke(cli, ["chat", str(exports["llama"]), "--variant", "fp32", "--threads", "1", *args])
    assert torch_out.exit_code == 0 and fp32_out.exit_code == 0, fp32_out.output
    assert fp32_out.stdout.strip() and fp32_out.stdout == torch_out.stdout  # the fp32 graph answers as PyTorch
    bad = CliRunner().invoke(cli, ["chat", str(exports["llama"]), "--variant", "fp99", *args])
    assert bad.exit_code == 1 and "no model_fp99.onnx: that variant was not exported" in bad.output
    wrong = CliRunner().invoke(cli, ["chat", str(tiny_models["llama"]), "--threads", "2", *args])
    assert wrong.exit_code == 2 and "for ONNX exports" in wrong.output


def test_manifest_says_how_it_was_made(tiny_models, exports):
    m = json.loads((exports["t5"] / "export.json").read_text())
    assert m["source"]["sha256"] == checkpoint_sha256(tiny_models["t5"])
    assert m["task"] == "text2text-generation-with-past"
    assert m["quantization"]["isa"] in ("avx512_vnni", "avx512", "avx2", "arm64")
    assert m["quantization"]["bits"] == 8 and m["quantization"]["block_size"] == 32
    assert {"onnxruntime", "optimum", "optimum-onnx", "torch", "transformers"} <= set(m["versions"])
    assert m["variants"]["int8"]["files"] == ["encoder_model.onnx", "decoder_model_merged.onnx"]
    assert "encoder_file_name" in m["variants"]["fp32"]["load"]
    meta = json.loads((exports["t5"] / "lamini.json").read_text())
    assert meta["family"] == "seq2seq" and meta["prompt_format"] == "raw" and meta["runtime"] == "onnx"
    # no redundant decoders: the merged one serves both steps
    assert not list(exports["t5"].glob("decoder_with_past*")) and not (exports["t5"] / "decoder_model.onnx").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_report_fields_are_present_and_sane(kind, exports):
    rep = json.loads((exports[kind] / "parity.json").read_text())
    assert rep["prompts"] == 3 and rep["forced_tokens"] == 32
    fp32, int8 = rep["variants"]["fp32"], rep["variants"]["default"]
    assert fp32["label"] == "ORT fp32" and int8["label"] == "ORT int8"
    for v in (fp32, int8):
        assert 0 <= v["top1_agreement"] <= 1 and 0 <= v["exact_match_32"] <= 1 and 0 <= v["rouge_l"] <= 1
        assert v["positions"] > 0 and v["mean_abs_logit_diff"] <= v["max_abs_logit_diff"]
    assert fp32["top1_agreement"] >= 0.99 and fp32["exact_match_32"] == 1.0 and fp32["rouge_l"] == 1.0
    assert fp32["mean_abs_logit_diff"] < 1e-2
    assert int8["bytes"] < fp32["bytes"]
    speed = {(r["runtime"], r["batch"]) for r in rep["speed"]}
    assert speed == {(rt, b) for rt in ("torch fp32", "ORT int8", "ORT fp32") for b in (1, 8)}
    assert all(r["tokens_per_second"] > 0 for r in rep["speed"])
    md = (exports[kind] / "parity.md").read_text()
    assert "top-1 agreement" in md and "| ORT int8 | 8 |" in md


def _tied_graph(path, vocab=4096, hidden=320, tied=True):
    """ids -> Gather(E) -> hidden states; x -> MatMul(x, Transpose(E)) -> logits: a tied embedding
    (untied: the MatMul has a weight of its own)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = rng.normal(0, 0.5, (vocab, hidden)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["h"], axis=0),
             helper.make_node("Transpose", ["E"], ["Et"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "Et" if tied else "W"], ["logits"])]
    weights = [numpy_helper.from_array(table, "E")]
    if not tied:
        weights.append(numpy_helper.from_array(rng.normal(0, 0.5, (hidden, vocab)).astype(np.float32), "W"))
    graph = helper.make_graph(
        nodes, "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", hidden])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["b", "s", hidden]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", vocab])],
        weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return table


@pytest.mark.parametrize("hidden", [320, 300])  # 300: the last block of each row is padded
def test_tied_embedding_is_stored_once_in_int8_and_looked_up_exactly(tmp_path, hidden):
    import numpy as np
    import onnxruntime as ort

    from lamini_serve.export.quantize import quantize_weights

    table = _tied_graph(tmp_path / "fp32.onnx", hidden=hidden)
    info = quantize_weights(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", bits=8, block_size=32)
    assert info["untied"] == 1 and info["quantized_matmuls"] == 1 and info["fp32_matmuls_left"] == 0
    assert info["embedding_tables"]["E"].startswith("int8, shared with")
    # one int8 copy with a 4-byte scale per 32 weights (+ padding to whole blocks): about 29%, not 2 x 25%
    assert (tmp_path / "int8.onnx").stat().st_size < 0.31 * (tmp_path / "fp32.onnx").stat().st_size
    ids = np.array([[0, 5, 4095], [17, 17, 2]], dtype=np.int64)
    x = np.random.default_rng(1).normal(size=(2, 3, hidden)).astype(np.float32)
    h, logits = ort.InferenceSession(str(tmp_path / "int8.onnx")).run(None, {"ids": ids, "x": x})
    want = table[ids]
    step = np.abs(table).max() / 127  # the largest possible quantization step
    assert h.shape == want.shape and np.abs(h - want).max() <= step / 2 + 1e-6
    assert np.corrcoef(logits.ravel(), (x @ table.T).ravel())[0, 1] > 0.999


def test_an_untied_embedding_gets_int8_rows_of_its_own_within_half_a_step(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from lamini_serve.export.quantize import quantize_weights

    table = _tied_graph(tmp_path / "fp32.onnx", hidden=300, tied=False)
    info = quantize_weights(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", bits=8, block_size=32)
    assert info["embedding_tables"]["E"] == "int8" and info["quantized_matmuls"] == 1
    ids = np.array([[0, 5, 4095], [17, 17, 2]], dtype=np.int64)
    x = np.zeros((2, 3, 300), dtype=np.float32)
    h, _ = ort.InferenceSession(str(tmp_path / "int8.onnx")).run(None, {"ids": ids, "x": x})
    # each block of 32 has its own scale: the error is at most half of that block's step
    want = table[ids]
    blocks = np.pad(table, ((0, 0), (0, 320 - 300))).reshape(4096, 10, 32)
    step = np.repeat(np.abs(blocks).max(-1) / 127, 32, axis=-1)[:, :300][ids]
    assert np.all(np.abs(h - want) <= step / 2 + 1e-6)


def test_ort_sampling_is_seeded_and_streams_what_generate_returns(exports):
    eng = OrtEngine(ModelSpec.resolve(exports["llama"]), variant="fp32")
    sample = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    a = eng.generate(_convs()[:1], sample)[0].text
    assert a == eng.generate(_convs()[:1], sample)[0].text
    greedy = SamplingParams(max_new_tokens=10, repetition_penalty=1.0)
    tiny_p = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=1e-6, seed=1, repetition_penalty=1.0)
    assert eng.generate(_convs()[:1], tiny_p)[0].text == eng.generate(_convs()[:1], greedy)[0].text
    assert "".join(eng.stream(_convs()[0], greedy)) == eng.generate(_convs()[:1], greedy)[0].text
    forced = eng.generate(_convs()[:1], SamplingParams(max_new_tokens=10, ignore_eos=True))[0]
    assert forced.completion_tokens == 10


def test_fp16_variant_loads_and_generates(tiny_models, tmp_path):
    out = tmp_path / "fp16"
    export_model(str(tiny_models["llama"]), out, ExportOptions(fp16=True, quantize="none"), report_prompts=0)
    assert (out / onnx_file("causal", "fp16")).is_file() and (out / "model.onnx").is_file()
    eng = OrtEngine(ModelSpec.resolve(out), variant="fp16")
    assert eng.generate(_convs()[:1], SamplingParams(max_new_tokens=4))[0].completion_tokens >= 1
    assert json.loads((out / "lamini.json").read_text())["default_variant"] == "fp32"


def test_check_fails_below_the_threshold_and_keeps_the_report(tiny_models, tmp_path):
    out = tmp_path / "checked"
    r = CliRunner().invoke(cli, ["export", str(tiny_models["llama"]), str(out), "--prompts", "2", "--check",
                                 "--min-top1", "1.0"])
    assert r.exit_code == 1 and "parity check failed" in r.output and "top-1 agreement" in r.output
    assert (out / "parity.md").is_file()
    r = CliRunner().invoke(cli, ["export", str(tiny_models["llama"]), str(out), "--prompts", "2", "--check",
                                 "--min-top1", "0", "--overwrite"])
    assert r.exit_code == 0, r.output


# ---- bad input ------------------------------------------------------------------
def _run(*args):
    r = CliRunner().invoke(cli, ["export", *args])
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    return r.output


def test_unsupported_architecture_is_named_with_the_supported_list(tmp_path):
    folder = tmp_path / "ctrl"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "ctrl", "architectures": ["CTRLLMHeadModel"]}))
    out = _run(str(folder), str(tmp_path / "o"))
    assert "'ctrl'" in out and "llama" in out and "gpt2" in out
    assert not (tmp_path / "o").exists()


def test_missing_and_corrupt_checkpoints(tiny_models, tmp_path):
    assert "no such folder" in _run(str(tmp_path / "nope"), str(tmp_path / "o"))
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_models["llama"].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    out = _run(str(bad), str(tmp_path / "o"))
    assert "could not export" in out
    assert not (tmp_path / "o").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_existing_output_is_refused_without_overwrite(tiny_models, tmp_path):
    (tmp_path / "o").mkdir()
    assert "already exists" in _run(str(tiny_models["llama"]), str(tmp_path / "o"))


def test_exporting_an_export_is_refused(exports, tmp_path):
    assert "already an ONNX export" in _run(str(exports["llama"]), str(tmp_path / "again"))


def test_instruction_sets():
    assert resolve_isa("auto", flags={"avx2", "avx512f", "avx512_vnni"}, arm=False) == "avx512_vnni"
    assert resolve_isa("auto", flags={"avx2"}, arm=False) == "avx2"
    assert resolve_isa("auto", arm=True) == "arm64"
    with pytest.raises(LaminiError, match="lacks avx512_vnni.*avx2"):
        resolve_isa("avx512_vnni", flags={"avx2"}, arm=False)
    with pytest.raises(LaminiError, match="none of AVX2"):
        resolve_isa("auto", flags=set(), arm=False)
    if "arm64" not in supported_isas():
        assert "lacks arm64" in _run("embedded", "/tmp/never-written", "--isa", "arm64")


@pytest.mark.parametrize("fault", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_export_leaves_nothing(tiny_models, tmp_path, monkeypatch, fault):
    import lamini_serve.export.quantize as q

    def broken(*a, **k):
        raise fault

    monkeypatch.setattr(q, "quantize_weights", broken)
    with pytest.raises(type(fault)):
        export_model(str(tiny_models["llama"]), tmp_path / "o", ExportOptions(format="onnx"), report_prompts=0)
    assert os.listdir(tmp_path) == []


def test_herd_export_exports_every_trained_student_and_resumes(tiny_models, tmp_path):
    herd = tmp_path / "herd"
    for name, kind in (("small", "llama"), ("seq", "t5")):
        src = tiny_models[kind]
        (herd / name).mkdir(parents=True)
        for f in src.iterdir():
            (herd / name / f.name).write_bytes(f.read_bytes())
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"dataset: d.parquet\noutput: {herd}\nstudents:\n  - {{name: small, base: gpt2}}\n"
                      f"  - {{name: seq, base: google/flan-t5-small}}\n")
    r = CliRunner().invoke(cli, ["export", "--herd", str(recipe), "--prompts", "0"])
    assert r.exit_code == 0, r.output
    root = tmp_path / "herd-onnx"
    assert (root / "small" / "model.onnx").is_file() and (root / "seq" / "encoder_model.onnx").is_file()
    r = CliRunner().invoke(cli, ["export", "--herd", str(recipe), "--prompts", "0"])
    assert r.exit_code == 0 and r.output.count("skipped") == 2
    recipe.write_text(recipe.read_text() + "  - {name: untrained, base: gpt2}\n")
    out = _run("--herd", str(recipe))
    assert "no trained checkpoint for untrained" in out


@pytest.mark.slow
def test_the_embedded_teacher_exports_and_int8_still_answers(teacher_path, tmp_path):
    out = tmp_path / "teacher-onnx"
    m = export_model(str(teacher_path), out, ExportOptions(format="onnx"), report_prompts=3)
    assert m["variants"]["int8"]["bytes"] < 0.3 * m["variants"]["fp32"]["bytes"]
    rep = json.loads((out / "parity.json").read_text())
    assert rep["variants"]["fp32"]["top1_agreement"] >= 0.99
    assert rep["variants"]["default"]["top1_agreement"] >= 0.85
    r = CliRunner().invoke(cli, ["chat", str(out), "-p", "What is the capital of France?", "--max-new-tokens", "24"])
    assert r.exit_code == 0 and "Paris" in r.output, r.output


def test_an_export_is_a_teacher_for_lamini_data(tiny_models, exports, tmp_path):
    """`lamini data run --teacher EXPORT`: the fp32 graph answers as the checkpoint did (so it keeps
    the checkpoint's teacher name and a run resumes across the two), a quantized one is another
    teacher by name, and a variant that is not there is one line."""
    from lamini_serve.teacher.backends import InProcessTeacher
    from lamini_serve.teacher.client import Request

    payload = {"max_tokens": 10, "temperature": 0.0}
    reqs = [Request(str(i), "chat", {"messages": c, **payload}) for i, c in enumerate(_convs())]

    def answers(teacher):
        got = {}
        teacher.run(reqs, lambda r: got.__setitem__(r.key, r.completion.text))
        return [got[r.key] for r in reqs]

    torch_teacher = InProcessTeacher(str(tiny_models["llama"]), batch_size=2, device="cpu")
    fp32 = InProcessTeacher(str(exports["llama"]), batch_size=2, variant="fp32")
    int8 = InProcessTeacher(str(exports["llama"]), batch_size=2)
    assert type(fp32.engine).__name__ == "OrtEngine" and type(torch_teacher.engine).__name__ == "TorchEngine"
    assert answers(fp32) == answers(torch_teacher)
    assert fp32.id == torch_teacher.id and int8.id == f"{torch_teacher.id}@int8"
    assert int8.provenance["variant"] == "int8" and len(answers(int8)) == len(reqs)

    runner = CliRunner()
    r = runner.invoke(cli, ["data", "run", str(tmp_path / "a"), "--teacher", str(exports["llama"]),
                            "--teacher-variant", "fp16"])
    assert r.exit_code != 0 and "has no fp16 variant" in r.output and "Traceback" not in r.output
    r = runner.invoke(cli, ["data", "run", str(tmp_path / "b"), "--teacher", str(tiny_models["llama"]),
                            "--teacher-variant", "fp32"])
    assert r.exit_code != 0 and "needs an ONNX export" in r.output
