"""`lamini export --format fused` (onnxruntime-genai's model builder) on a tiny tied llama."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from lamini_serve.cli import cli
from lamini_serve.engines.ort_engine import OrtEngine
from lamini_serve.engines.torch_engine import SamplingParams, TorchEngine
from lamini_serve.errors import LaminiError
from lamini_serve.export.exporter import ExportOptions, export_model
from lamini_serve.models import ModelSpec

PROMPTS = ["Give three tips for staying healthy.", "hi", "Write a haiku about the sea and the salt in the wind at dusk."]


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory, tiny_tokenizer):
    from lamini_serve.testing import make_tiny_model

    return make_tiny_model("llama", tmp_path_factory.mktemp("tied") / "llama", tokenizer=tiny_tokenizer, tied=True)


@pytest.fixture(scope="module")
def fused(tied_llama, tmp_path_factory):
    """The tied llama as a fused export: int8 (default) + fp32, with a 3-prompt report. Its
    embedding (512 x 64) is below the size from which tables get int8 rows: lowered here."""
    out = tmp_path_factory.mktemp("fused") / "llama"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("lamini_serve.export.quantize.MIN_TABLE_ELEMENTS", 1)
        export_model(str(tied_llama), out, ExportOptions(format="fused"), report_prompts=3)
    return out


def _convs():
    return [[{"role": "user", "content": p}] for p in PROMPTS]


def test_fused_fp32_answers_exactly_as_pytorch_in_one_padded_batch(tied_llama, fused):
    params = SamplingParams(max_new_tokens=12, repetition_penalty=1.0)
    torch_eng = TorchEngine(ModelSpec.resolve(tied_llama), device="cpu", dtype="float32")
    want = [torch_eng.generate([c], params)[0] for c in _convs()]
    eng = OrtEngine(ModelSpec.resolve(fused), variant="fp32")
    assert eng.decoder.right_padded
    got = eng.generate(_convs(), params)  # three lengths: rows padded on the right
    assert [g.text for g in got] == [w.text for w in want]
    assert [g.completion_tokens for g in got] == [w.completion_tokens for w in want]


def test_manifest_report_and_int8_embedding_shared_with_the_head(fused):
    import onnx

    manifest = json.loads((fused / "export.json").read_text())
    assert manifest["format"] == "fused" and set(manifest["variants"]) == {"int8", "fp32"}
    assert manifest["quantization"]["bits"] == 8 and manifest["quantization"]["embeddings"] == "int8 rows"
    [(table, how)] = manifest["quantization"]["graphs"]["model.onnx"]["embedding_tables"].items()
    assert "embed_tokens" in table and how.startswith("int8, shared with /lm_head/")
    graph = onnx.load(str(fused / "model.onnx"), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert {"GroupQueryAttention", "MatMulNBits", "SkipSimplifiedLayerNormalization"} <= ops
    assert not any(i.name == table for i in graph.initializer)  # the fp32 table is gone
    assert manifest["variants"]["int8"]["bytes"] < 0.5 * manifest["variants"]["fp32"]["bytes"]
    report = json.loads((fused / "parity.json").read_text())
    assert report["variants"]["fp32"]["top1_agreement"] == 1.0
    assert report["variants"]["default"]["top1_agreement"] >= 0.8
    assert {r["runtime"] for r in report["speed"]} == {"torch fp32", "ORT int8", "ORT fp32"}


def test_the_shared_int8_rows_are_the_embedding_within_a_step(fused, tied_llama):
    """The bytes the lookup now reads (the lm_head's MatMulNBits weight) dequantize to the
    checkpoint's embedding table: the tie is real, not just a matching shape."""
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file

    table = next(v for k, v in load_file(str(tied_llama / "model.safetensors")).items() if "embed_tokens" in k)
    inits = {i.name: i for i in onnx.load(str(fused / "model.onnx")).graph.initializer}
    q = numpy_helper.to_array(inits["lm_head.MatMul.weight_Q8"]).astype(np.float32)  # [vocab, blocks, block]
    scales = numpy_helper.to_array(inits["lm_head.MatMul.weight_scales"]).reshape(q.shape[0], q.shape[1], 1)
    rows = ((q - 128) * scales).reshape(q.shape[0], -1)[:, :table.shape[1]]
    step = np.abs(np.repeat(scales[..., 0], q.shape[2], axis=1)[:, :table.shape[1]])  # the builder keeps signed scales
    assert rows.shape == table.shape
    assert (np.abs(rows - table) <= step + 1e-6).all()  # the builder's rounding is not strictly nearest: a step
    assert np.abs(rows - table).mean() <= 0.3 * step.mean()


def test_chat_and_the_cli_run_a_fused_export(fused, tmp_path, tied_llama):
    out = CliRunner().invoke(cli, ["chat", str(fused), "--max-new-tokens", "8", "--temperature", "0"], input="hi\n")
    assert out.exit_code == 0, out.output
    res = CliRunner().invoke(cli, ["export", str(tied_llama), str(tmp_path / "q4"), "--format", "fused",
                                   "--quantize", "int4", "--drop-fp32", "--prompts", "0"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "q4" / "export.json").read_text())
    assert manifest["quantization"]["bits"] == 4 and set(manifest["variants"]) == {"int4"}
    assert OrtEngine(ModelSpec.resolve(tmp_path / "q4")).generate(_convs()[:1], SamplingParams(max_new_tokens=4))[0].text


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_families_the_builder_cannot_write_are_refused_with_the_fix(kind, tiny_models, tmp_path):
    with pytest.raises(LaminiError, match="--format fused cannot write .*use --format onnx"):
        export_model(str(tiny_models[kind]), tmp_path / kind, ExportOptions(format="fused"), report_prompts=0)
    assert not (tmp_path / kind).exists()


@pytest.mark.parametrize("fault", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_fused_export_leaves_nothing(tied_llama, tmp_path, monkeypatch, fault):
    import lamini_serve.export.quantize as q

    def broken(*a, **k):
        raise fault

    monkeypatch.setattr(q, "quantize_gathers", broken)
    with pytest.raises(type(fault)):
        export_model(str(tied_llama), tmp_path / "o", report_prompts=0)  # auto: fused for a llama
    assert os.listdir(tmp_path) == []


def test_auto_picks_fused_for_llama_and_onnx_for_the_others(tiny_models, monkeypatch):
    import lamini_serve.export.exporter as ex

    specs = {k: ModelSpec.resolve(tiny_models[k]) for k in ("llama", "gpt2", "t5")}
    got = {k: (o.format, o.block_size) for k, o in ((k, ExportOptions().resolved(s)) for k, s in specs.items())}
    assert got == {"llama": ("fused", 64), "gpt2": ("onnx", 32), "t5": ("onnx", 32)}
    assert ExportOptions(quantize="int4").resolved(specs["llama"]).block_size == 32
    assert ExportOptions(block_size=16).resolved(specs["llama"]).block_size == 16
    assert ExportOptions(fp16=True).resolved(specs["llama"]).format == "onnx"
    monkeypatch.setattr(ex, "_has_genai", lambda: False)  # without onnxruntime-genai: optimum's export
    assert ExportOptions().resolved(specs["llama"]).format == "onnx"


def test_options_the_fused_format_has_not_are_refused():
    with pytest.raises(LaminiError, match="MatMulNBits only"):
        ExportOptions(format="fused", quantize="int8-dynamic")
    with pytest.raises(LaminiError, match="no --fp16"):
        ExportOptions(format="fused", fp16=True)
    with pytest.raises(LaminiError, match="unknown --format"):
        ExportOptions(format="gguf")
