import random

import pytest

from lamini_serve.data.dedup import DedupConfig, dedup_reasons, exact_duplicates, minhash_signatures, near_duplicates
from lamini_serve.data.filters import FilterConfig, instruction_reason, response_reason
from lamini_serve.errors import LaminiError


def test_exact_after_normalization():
    t = ["What is AI?", "what is ai", "What  is AI ?!", "What is ML?"]
    assert exact_duplicates(t) == [None, 0, 0, None]


def test_near_duplicates_found_and_unrelated_kept():
    base = [
        "Write a short poem about the sea and the wind at night.",
        "Explain how vaccines train the immune system to fight disease.",
        "List five tips for saving money on groceries every week.",
        "Describe the main causes of the French Revolution in detail.",
    ]
    edits = [
        "Write a short poem about the sea and the winds at night.",
        "Explain how vaccines train the immune system to fight diseases.",
        "List five tips for saving money on groceries each week.",
        "Describe the main causes of the French Revolution in great detail.",
    ]
    reasons = dedup_reasons(base + edits)
    assert reasons[:4] == [None] * 4
    for i, r in enumerate(reasons[4:]):
        assert r is not None and r.startswith(f"near duplicate of row {i}"), r


def test_threshold_and_switches():
    t = ["What is the capital of France?", "What is the capital of Spain?"]
    assert dedup_reasons(t, DedupConfig(threshold=0.95)) == [None, None]
    assert dedup_reasons(t, DedupConfig(threshold=0.5))[1] is not None
    assert dedup_reasons(["a b c", "a b c"], DedupConfig(exact=False, near=False)) == [None, None]


def test_dropped_rows_neither_get_nor_give_reasons():
    t = ["Tell me a joke about cats.", "Tell me a joke about cats."]
    assert dedup_reasons(t, dropped=[True, False]) == [None, None]


def test_minhash_is_deterministic_and_estimates_jaccard():
    rng = random.Random(0)
    texts = ["".join(rng.choice("abcdefghij ") for _ in range(80)) for _ in range(50)]
    a = minhash_signatures(texts, num_perm=64)
    b = minhash_signatures(texts, num_perm=64, chunk_rows=7)
    assert (a == b).all()
    assert all(x is None for x in near_duplicates(a, bands=16, threshold=0.9))


def test_bad_dedup_config():
    with pytest.raises(LaminiError, match="threshold"):
        DedupConfig(threshold=0)


@pytest.mark.parametrize(
    "text, rule",
    [
        ("Hi there", "too short"),
        ("word " * 151, "too long"),
        ("Describe the image below in detail.", "needs media"),
        ("Plot the data as a bar chart please.", "needs media"),
        ("- List three fruits that are red.", "starts with"),
        ("Ü is a letter: explain where it is used.", "starts with"),
        ("Say it again and again. Say it again and again. Say it again and again. Say it again and again.", "repeats"),
    ],
)
def test_instruction_filters(text, rule):
    why = instruction_reason(text)
    assert why is not None and why.startswith(rule), why


def test_filters_can_be_switched_off():
    assert instruction_reason("Describe the image below in detail.", FilterConfig(disabled=("media",))) is None
    assert instruction_reason("Hi there", FilterConfig(min_words=1)) is None
    assert instruction_reason("Give three tips for staying healthy.") is None
    with pytest.raises(LaminiError, match="unknown filter"):
        FilterConfig(disabled=("nope",))


def test_response_garbage():
    assert response_reason("") == "empty"
    assert response_reason("\ufffd\x00#%$@!").startswith("garbage")
    assert response_reason("#### !!!! 1234 ....") .startswith("garbage")
    assert response_reason("Paris is the capital of France.") is None
