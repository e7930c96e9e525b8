"""The measures of how a student speaks: greedy answers, the teacher's perplexity of them, distinct-2."""

import math

import pytest
import torch

from lamini_serve.models import ModelSpec
from lamini_serve.quality import distinct_2, greedy_answers, perplexity


def test_distinct_2_separates_loops_from_varied_text():
    assert distinct_2(["the cat sat on the mat"]) == 1.0
    assert distinct_2(["a a a a a a"]) == pytest.approx(1 / 5)
    assert distinct_2(["one two", "one two"]) == pytest.approx(1 / 2)  # over the whole set
    assert distinct_2(["", "word"]) == 0.0


def test_perplexity_is_the_mean_answer_token_loss(tiny_models, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    spec = ModelSpec.resolve(tiny_models["llama"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    instructions = ["Name a colour.", "Count to three, please."]
    answers = ["Blue is a colour.", "One, two, three."]
    got = perplexity(model, tiny_tokenizer, spec, instructions, answers, [True, False])
    # the same figure one example at a time, from the model's own loss
    nll, n = 0.0, 0
    for inst, ans, end in zip(instructions, answers, [True, False]):
        p = tiny_tokenizer(spec.prompt(inst, tiny_tokenizer), add_special_tokens=spec.add_special_tokens)["input_ids"]
        a = tiny_tokenizer(ans, add_special_tokens=False)["input_ids"] + ([tiny_tokenizer.eos_token_id] if end else [])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([p + a]), labels=torch.tensor([[-100] * len(p) + a])).loss.item()
        nll, n = nll + loss * len(a), n + len(a)
    assert got.tokens == n
    assert got.value == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_a_models_own_greedy_answers_are_the_most_likely_to_it(tiny_models, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    spec = ModelSpec.resolve(tiny_models["llama"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    instructions = ["Name a colour.", "Say hello."]
    own = greedy_answers(model, tiny_tokenizer, spec, instructions, max_new_tokens=12)
    assert all(c.text for c in own) and all(c.completion_tokens <= 12 for c in own)
    texts = [c.text for c in own]
    mine = perplexity(model, tiny_tokenizer, spec, instructions, texts, [not c.cut for c in own]).value
    other = perplexity(model, tiny_tokenizer, spec, instructions, [texts[1], texts[0]],
                       [not own[1].cut, not own[0].cut]).value
    assert mine < other
