import pytest

from lamini_serve.engines.torch_engine import TorchEngine
from lamini_serve.errors import LaminiError
from lamini_serve.generation import SamplingParams, cut_at_stop, held_back
from lamini_serve.prompts import conversation

KINDS = ["llama", "gpt2", "t5"]
PROMPTS = ["Give three tips for staying healthy.", "hi", "What is the capital of France? Answer briefly."]


@pytest.fixture(scope="module")
def engines(tiny_models):
    return {k: TorchEngine.from_name(str(tiny_models[k]), device="cpu") for k in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_stream_yields_pieces_that_join_to_the_greedy_answer(engines, kind):
    eng = engines[kind]
    params = SamplingParams(max_new_tokens=16)
    # (the random t5 answers the first prompt with two characters, then bytes that never
    # form a character: dropped at the end, so the answer is a single piece)
    msgs = conversation(PROMPTS[2])
    pieces = list(eng.stream(msgs, params))
    assert len(pieces) > 1, "streaming should deliver text before generation ends"
    [whole] = eng.generate([msgs], params)
    assert "".join(pieces).strip() == whole.text
    assert whole.text


@pytest.mark.parametrize("kind", KINDS)
def test_batched_generation_matches_one_by_one(engines, kind):
    eng = engines[kind]
    params = SamplingParams(max_new_tokens=12)
    convs = [conversation(p) for p in PROMPTS]
    batched = eng.generate(convs, params)
    single = [eng.generate([c], params)[0] for c in convs]
    assert [b.text for b in batched] == [s.text for s in single]
    assert [b.prompt_tokens for b in batched] == [s.prompt_tokens for s in single]
    for c in batched:
        assert 1 <= c.completion_tokens <= 12
        assert c.finish_reason in ("stop", "length")


def test_sampling_with_a_seed_repeats(engines):
    eng = engines["gpt2"]
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=123)
    a = eng.generate([conversation("hi")], params)[0].text
    b = eng.generate([conversation("hi")], params)[0].text
    assert a == b


def test_stop_string_cuts_stream_and_batch(engines):
    eng = engines["gpt2"]
    greedy = eng.generate([conversation("hi")], SamplingParams(max_new_tokens=16))[0].text
    assert len(greedy) > 6
    stop = greedy[4:7]
    expected = greedy[: greedy.find(stop)].strip()
    params = SamplingParams(max_new_tokens=16, stop=(stop,))
    assert eng.generate([conversation("hi")], params)[0].text == expected
    assert "".join(eng.stream(conversation("hi"), params)).strip() == expected


def test_cut_and_hold_back():
    assert cut_at_stop("abc### Instruction: x", ["### Instruction:"]) == ("abc", True)
    assert cut_at_stop("abc", ["zz"]) == ("abc", False)
    assert held_back("answer ###", ["### Instruction:"]) == 3
    assert held_back("answer", ["### Instruction:"]) == 0


@pytest.mark.parametrize(
    "kw, match",
    [({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -0.1}, "temperature"),
     ({"top_p": 0}, "top_p"), ({"repetition_penalty": 0}, "repetition_penalty")],
)
def test_sampling_params_refuse_nonsense(kw, match):
    with pytest.raises(LaminiError, match=match):
        SamplingParams(**kw)



def test_visible_pieces_keep_first_letters_and_match_the_stripped_answer():
    from lamini_serve.generation import visible_pieces

    assert "".join(visible_pieces(iter(["\n", "Hello", " world"]), ())) == "Hello world"
    assert "".join(visible_pieces(iter(["\n", "\n", "Hello"]), ())) == "Hello"
    stops = ("### Instruction:",)
    assert "".join(visible_pieces(iter(["Hello", " world\n", "\n###", " Instruction:", " more"]), stops)) == "Hello world"
    assert "".join(visible_pieces(iter(["  ", "\n"]), ())) == ""


def test_bytes_that_never_form_a_character_are_dropped_at_the_end_only():
    from lamini_serve.generation import finish, visible_pieces

    done = finish("caf\ufffd ok \ufffd\ufffd \n", (), 3, 8, ended=False, max_new_tokens=8)
    assert done.text == "caf\ufffd ok" and done.finish_reason == "length"
    assert "".join(visible_pieces(iter(["caf", "\ufffd ok", " \ufffd", "\ufffd \n"]), ())) == done.text
