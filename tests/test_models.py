import json

import pytest

from lamini_serve.errors import LaminiError
from lamini_serve.models import Family, ModelSpec, family_from_config
from lamini_serve.prompts import PromptFormat
from lamini_serve.testing import make_tiny_model


@pytest.mark.parametrize(
    "kind, family, fmt",
    [("llama", Family.CAUSAL, PromptFormat.CHAT), ("gpt2", Family.CAUSAL, PromptFormat.ALPACA), ("t5", Family.SEQ2SEQ, PromptFormat.RAW)],
)
def test_family_and_recorded_format(tiny_models, kind, family, fmt):
    spec = ModelSpec.resolve(tiny_models[kind])
    assert spec.family is family
    assert spec.prompt_format is fmt
    assert spec.model_type == kind


@pytest.mark.parametrize(
    "config, family",
    [
        ({"model_type": "t5", "is_encoder_decoder": True}, Family.SEQ2SEQ),
        ({"model_type": "t5"}, Family.SEQ2SEQ),
        ({"model_type": "bart", "is_encoder_decoder": True}, Family.SEQ2SEQ),
        ({"model_type": "gpt2"}, Family.CAUSAL),
        ({"model_type": "gpt_neo"}, Family.CAUSAL),
        ({"model_type": "llama"}, Family.CAUSAL),
        ({"model_type": "something-new", "architectures": ["NewForCausalLM"]}, Family.CAUSAL),
        ({"model_type": "something-new", "architectures": ["NewForConditionalGeneration"]}, Family.SEQ2SEQ),
    ],
)
def test_family_from_config(config, family):
    assert family_from_config(config) is family


def test_encoder_only_model_is_refused():
    with pytest.raises(LaminiError, match="neither a causal nor a seq2seq"):
        family_from_config({"model_type": "distilbert", "architectures": ["DistilBertModel"]}, "distilbert-base")


def test_format_follows_the_checkpoint_not_the_name(tmp_path, tiny_tokenizer):
    # No lamini.json: the format comes from what the checkpoint holds.
    llama = make_tiny_model("llama", tmp_path / "gpt2-looking-name", prompt_format=None, tokenizer=tiny_tokenizer)
    assert ModelSpec.resolve(llama).prompt_format is PromptFormat.CHAT  # it has a chat template
    t5 = make_tiny_model("t5", tmp_path / "t5", prompt_format=None, tokenizer=tiny_tokenizer)
    assert ModelSpec.resolve(t5).prompt_format is PromptFormat.RAW
    gpt2 = make_tiny_model("gpt2", tmp_path / "gpt2", prompt_format=None, tokenizer=tiny_tokenizer)
    cfg_path = gpt2 / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    (gpt2 / "chat_template.jinja").unlink(missing_ok=True)
    assert ModelSpec.resolve(gpt2).prompt_format is PromptFormat.ALPACA


def test_recorded_format_wins_over_the_chat_template(tmp_path, tiny_tokenizer):
    # A student trained with the Alpaca wrapper keeps it although its tokenizer has a chat template.
    p = make_tiny_model("llama", tmp_path / "student", prompt_format="alpaca", tokenizer=tiny_tokenizer)
    spec = ModelSpec.resolve(p)
    assert spec.prompt_format is PromptFormat.ALPACA
    assert spec.prompt("Hi").endswith("### Instruction:\nHi\n\n### Response:")
    assert ModelSpec.resolve(p, prompt_format="raw").prompt_format is PromptFormat.RAW


def test_corrupt_metadata_is_named(tmp_path, tiny_tokenizer):
    p = make_tiny_model("gpt2", tmp_path / "m", tokenizer=tiny_tokenizer)
    (p / "lamini.json").write_text("{not json")
    with pytest.raises(LaminiError, match="lamini.json is not valid JSON"):
        ModelSpec.resolve(p)


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(LaminiError, match="is a file, not a checkpoint folder"):
        ModelSpec.resolve(f)


def test_embedded_not_pulled_without_pull():
    with pytest.raises(LaminiError, match="lamini teacher pull"):
        ModelSpec.resolve("embedded")


@pytest.mark.parametrize("kind", ["llama", "gpt2", "t5"])
def test_load_model_and_tokenizer(tiny_models, kind):
    spec = ModelSpec.resolve(tiny_models[kind])
    tok = spec.load_tokenizer()
    model = spec.load_model(device="cpu")
    assert model.config.model_type == kind
    assert tok.padding_side == ("left" if spec.family is Family.CAUSAL else "right")
    assert not model.training


def test_resolving_never_pulls_but_commands_do_and_say_so(monkeypatch):
    """Resolving `embedded` reads what is there; only resolve_model (used by commands) fetches it."""
    import lamini_serve.teacher.embedded as emb

    calls = []

    def fake_pull(release=emb.SMOLLM2, log=None, **kw):
        calls.append(release)
        raise LaminiError("pull attempted")

    monkeypatch.setattr(emb, "pull_teacher", fake_pull)
    with pytest.raises(LaminiError, match="not pulled yet"):
        ModelSpec.resolve("embedded")
    assert calls == []
    said = []
    with pytest.raises(LaminiError, match="pull attempted"):
        emb.resolve_model("embedded", log=said.append)
    assert len(calls) == 1 and "pulling it once" in said[0]
