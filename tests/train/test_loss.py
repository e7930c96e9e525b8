import pytest
import torch

from lamini_serve.models import ModelSpec
from lamini_serve.train.data import CausalCollator, encode_causal, pack
from lamini_serve.train.loss import answer_only_loss, supports_answer_only

PAIRS = [{"instruction": f"Name fact {i} about the sea.", "response": f"The sea fact {i} is wet and blue."} for i in range(6)]


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("packed", [False, True])
def test_answer_only_loss_equals_the_models_loss_and_gradients(tiny_models, tiny_tokenizer, kind, packed):
    from transformers import AutoModelForCausalLM

    spec = ModelSpec.resolve(tiny_models[kind])
    model = AutoModelForCausalLM.from_pretrained(tiny_models[kind], attn_implementation="eager")
    model.eval()  # no dropout, so every pass sees the same network (gradients flow all the same)
    assert supports_answer_only(model)
    rows = encode_causal(PAIRS, spec, tiny_tokenizer, 256)
    rows = pack(rows, 256) if packed else rows
    batch = CausalCollator(pad_id=tiny_tokenizer.pad_token_id)(rows)

    torch.manual_seed(0)
    want = model(**batch).loss
    want.backward()
    want_grads = _grads(model)
    model.zero_grad()
    torch.manual_seed(0)
    got = answer_only_loss(model, batch)
    got.backward()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (got.item(), want.item())
    got_grads = _grads(model)
    assert got_grads.keys() == want_grads.keys()
    for name, g in want_grads.items():
        assert torch.allclose(got_grads[name], g, rtol=1e-4, atol=1e-6), name

    # normalised by the Trainer's count over accumulated batches: the sum over tokens / that count
    n = (batch["labels"] != -100).sum()
    assert torch.allclose(answer_only_loss(model, batch, num_items=2 * n), want.detach() / 2, rtol=1e-5)


def test_the_head_sees_only_answer_positions(tiny_models, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    spec = ModelSpec.resolve(tiny_models["llama"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    batch = CausalCollator(pad_id=tiny_tokenizer.pad_token_id)(encode_causal(PAIRS[:3], spec, tiny_tokenizer, 256))
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    try:
        answer_only_loss(model, batch)
    finally:
        handle.remove()
    answers = int((batch["labels"][:, 1:] != -100).sum())
    assert seen == [(answers, model.config.vocab_size)]
    assert answers < 0.7 * batch["input_ids"].numel()  # the prompts and padding were skipped


def test_models_with_capped_logits_keep_their_own_loss():
    from transformers import AutoModelForCausalLM, T5Config, T5ForConditionalGeneration

    gemma2 = pytest.importorskip("transformers").Gemma2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16)
    assert not supports_answer_only(AutoModelForCausalLM.from_config(gemma2))
    assert not supports_answer_only(T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1,
                                                                        num_heads=2, d_kv=8)))


def test_the_trainer_uses_it_and_falls_back_where_it_does_not_apply(tiny_models, tiny_tokenizer, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, TrainingArguments

    import lamini_serve.train.loss as loss_mod
    from lamini_serve.train.data import ListDataset

    spec = ModelSpec.resolve(tiny_models["llama"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    batch = CausalCollator(pad_id=tiny_tokenizer.pad_token_id)(encode_causal(PAIRS[:3], spec, tiny_tokenizer, 256))
    calls = []
    real = loss_mod.answer_only_loss
    monkeypatch.setattr(loss_mod, "answer_only_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    want = model(**batch).loss.item()
    for smoothing, used in ((0.0, True), (0.1, False)):
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], label_smoothing_factor=smoothing)
        trainer = loss_mod.answer_only_trainer_class()(model=model, args=args, train_dataset=ListDataset([]))
        calls.clear()
        got = trainer.compute_loss(model, dict(batch)).item()
        assert bool(calls) is used
        if used:
            assert abs(got - want) < 1e-5
