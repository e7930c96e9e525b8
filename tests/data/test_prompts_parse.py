from lamini_serve.data.prompts import (
    Example,
    chat_prompt,
    completion_prompt,
    how_many,
    parse_instructions,
)

EX = [Example("Name three primary colours."), Example("Translate to French", "Good morning"), Example("What is 2+2?")]


def test_chat_prompt_shows_examples_and_topics():
    p = chat_prompt(EX, ["Jazz", "Astronomy", "Cooking"])
    assert "<example>Translate to French : Good morning</example>" in p
    assert 'Generate 20 diverse examples that are similar to the provided examples with the topics "Jazz, Astronomy, Cooking".' in p
    assert "imperative sentence or a question" in p


def test_long_examples_ask_for_ten():
    long = [Example("Summarize the text.", "word " * 80), EX[0], EX[2]]
    assert how_many(long) == 10 and how_many(EX) == 20
    assert "Generate 10 diverse" in chat_prompt(long)


def test_completion_prompt_ends_with_the_next_number():
    p = completion_prompt(EX)
    assert p.endswith("\n1. Name three primary colours.\n2. Translate to French : Good morning\n3. What is 2+2?\n4.")


def test_parse_tags_with_missing_closers_numbers_blanks_and_echoes():
    out = (
        "Sure! Here are some:\n"
        "<example>1. Describe the water cycle.</example>\n"
        "<example>Name three primary colours.</example>\n"  # an echo of an example
        "<example>   </example>\n"  # blank
        "<example>Instruction: Write a haiku about rain.\n"  # no closing tag, a label
        "<example>- How do vaccines work?</example>\n"
        "<example>Describe the water cycle.</example>\n"  # a repeat
    )
    assert parse_instructions(out, "chat", EX) == ["Describe the water cycle.", "Write a haiku about rain.", "How do vaccines work?"]


def test_parse_untagged_numbered_list():
    out = "Here you go:\n1. Plan a picnic.\n2) Explain gravity to a child.\nThanks!"
    assert parse_instructions(out, "chat", EX) == ["Plan a picnic.", "Explain gravity to a child."]


def test_parse_completion_continuation():
    out = " What is the tallest mountain?\n5. Give two tips for learning Python.\n6. What is 2+2?\nThat is the list.\n7. ignored"
    assert parse_instructions(out, "completion", EX) == ["What is the tallest mountain?", "Give two tips for learning Python."]


def test_parse_limit():
    out = "\n".join(f"<example>Task number {i} here.</example>" for i in range(30))
    assert len(parse_instructions(out, "chat", EX, limit=20)) == 20
