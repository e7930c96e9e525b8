import random

import pytest

from lamini_serve.data.dedup import (
    DedupConfig,
    dedup_reasons,
    exact_duplicates,
    minhash_signatures,
    near_duplicates,
)
from lamini_serve.data.filters import FilterConfig, instruction_reason, response_reason
from lamini_serve.data.text import normalize
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


def _shingles(text: str, k: int = 5) -> set[bytes]:
    # The definition dedup promises: k-byte shingles of the normalized UTF-8 text.
    b = normalize(text).encode("utf-8").ljust(k)
    return {b[i:i + k] for i in range(len(b) - k + 1)}


def test_minhash_is_deterministic_and_estimates_jaccard():
    rng = random.Random(0)
    texts = ["".join(rng.choice("abcdefghij ") for _ in range(80)) for _ in range(50)]
    a = minhash_signatures(texts, num_perm=64)
    b = minhash_signatures(texts, num_perm=64, chunk_rows=7)
    assert (a == b).all()
    assert all(x is None for x in near_duplicates(a, bands=16, threshold=0.9))

    # Pairs from near copies to strangers: a base text and a copy with a share of its words replaced.
    vocab = [f"{c}{v}{d}" for c in "bdfgklmnprst" for v in "aeiou" for d in "nrst"]
    pairs = []
    for share in (0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0):
        for _ in range(3):
            words = [rng.choice(vocab) for _ in range(40)]
            other = [rng.choice(vocab) if rng.random() < share else w for w in words]
            pairs.append((" ".join(words), " ".join(other)))
    sigs = minhash_signatures([t for pair in pairs for t in pair], num_perm=256)
    estimates, exact = [], []
    for i, (x, y) in enumerate(pairs):
        estimates.append(float((sigs[2 * i] == sigs[2 * i + 1]).mean()))
        sx, sy = _shingles(x), _shingles(y)
        exact.append(len(sx & sy) / len(sx | sy))
    assert min(exact) < 0.1 and max(exact) == 1.0  # the pairs span the whole range
    errors = [abs(e - j) for e, j in zip(estimates, exact)]
    # 256 permutations: a standard error of at most 0.031, so 0.13 is over 4 of them.
    assert max(errors) < 0.13, list(zip(exact, estimates))
    assert sum(errors) / len(errors) < 0.04, list(zip(exact, estimates))


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


def test_word_limits_are_inclusive():
    cfg = FilterConfig(min_words=4, max_words=8)
    assert instruction_reason("Name three red fruits.", cfg) is None  # exactly min_words
    assert instruction_reason("Name red fruits.", cfg).startswith("too short (3 words < 4)")
    assert instruction_reason("Name three red fruits that grow in Spain.", cfg) is None  # exactly max_words
    assert instruction_reason("Name three red fruits that grow in southern Spain.", cfg).startswith("too long (9 words > 8)")


def test_response_garbage():
    assert response_reason("") == "empty"
    assert response_reason("\ufffd\x00#%$@!").startswith("garbage")
    assert response_reason("#### !!!! 1234 ....") .startswith("garbage")
    assert response_reason("Paris is the capital of France.") is None
