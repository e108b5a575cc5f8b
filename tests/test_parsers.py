"""Parsers from LLM output: fixed good, edge and malformed inputs."""

from __future__ import annotations

import pickle

import pytest

from recipe.errors import ParseError
from recipe.stages.llm.nemotron_cc import clean_knowledge_list, format_qa_pairs, parse_qa_pairs
from recipe.stages.parsers import (
    check_substrings,
    parse_list,
    parse_yaml_list,
    parse_yes_no,
    trim,
)

# --- parse_list ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "- Alpha\n- Beta\n- Gamma",
        "* Alpha\n* Beta\n* Gamma",
        "• Alpha\n• Beta\n• Gamma",
        "+ Alpha\n+ Beta\n+ Gamma",
        "1. Alpha\n2. Beta\n3. Gamma",
        "1) Alpha\n2) Beta\n3) Gamma",
        "(1) Alpha\n(2) Beta\n(3) Gamma",
        "1: Alpha\n2: Beta\n3: Gamma",
        "```yaml\n- Alpha\n- Beta\n- Gamma\n```",
        '```\n- "Alpha"\n- \'Beta\'\n- Gamma\n```',
        '["Alpha", "Beta", "Gamma"]',
        "  -   Alpha  \n\t- Beta\n   - Gamma   ",
    ],
)
def test_parse_list_formats(text):
    assert parse_list(text) == ["Alpha", "Beta", "Gamma"]


def test_parse_list_ignores_preamble_and_outro():
    text = "Here are 5 topics:\n\n1. **Photosynthesis**\n2. \"Gravity\"\n3. 'Tides'\n\nLet me know if you need more!"
    assert parse_list(text) == ["Photosynthesis", "Gravity", "Tides"]


def test_parse_list_strips_nested_wrapping_and_keeps_inner_bold():
    text = '- **"Quoted bold"**\n- "**Bold quoted**"\n- **Term**: its definition\n- \u201cCurly\u201d'
    assert parse_list(text) == ["Quoted bold", "Bold quoted", "**Term**: its definition", "Curly"]


def test_parse_list_drops_empty_items():
    assert parse_list('- Alpha\n-\n- ""\n- **  **\n- Beta') == ["Alpha", "Beta"]


def test_parse_list_yaml_keeps_raw_text_of_non_strings():
    # YAML would read these as 1.1, True and None; the raw line text is what the model meant.
    assert parse_list("- 1.10\n- yes\n- null") == ["1.10", "yes", "null"]


def test_parse_list_yaml_quoting_and_multiline():
    assert parse_list("- 'it''s: fine'\n- a long\n  continued item") == ["it's: fine", "a long continued item"]


def test_parse_list_flow_list_of_numbers():
    assert parse_list("[1, 2.5, 3]") == ["1", "2.5", "3"]


def test_parse_list_yaml_fence_with_preamble():
    text = "Sure! Here is the YAML:\n```yaml\n- First\n- Second\n```\nAnything else?"
    assert parse_list(text) == ["First", "Second"]


def test_parse_list_unclosed_fence():
    assert parse_list("```yaml\n- First\n- Second") == ["First", "Second"]


def test_parse_list_does_not_mistake_numbers_or_rules_for_items():
    text = "Intro mentions 1.5 million people.\n---\n*emphasis* here\n1. Real item"
    assert parse_list(text) == ["Real item"]


def test_parse_list_mapping_items_are_read_as_lines():
    assert parse_list("- Topic: description\n- Other: thing") == ["Topic: description", "Other: thing"]


@pytest.mark.parametrize(
    "text", ["", "   \n  ", "Just one sentence without a list.", "Here are topics:\n-\n- ''", "{a: 1}"]
)
def test_parse_list_no_items_raises(text):
    with pytest.raises(ParseError, match="no list items"):
        parse_list(text)


def test_parse_list_error_shows_only_80_chars():
    text = "x" * 200
    with pytest.raises(ParseError) as excinfo:
        parse_list(text)
    assert "x" * 80 in str(excinfo.value)
    assert "x" * 81 not in str(excinfo.value)


def test_parse_error_pickles():
    with pytest.raises(ParseError) as excinfo:
        parse_list("nothing")
    clone = pickle.loads(pickle.dumps(excinfo.value))
    assert type(clone) is ParseError and str(clone) == str(excinfo.value)


# --- parse_yaml_list ----------------------------------------------------------------------


def test_parse_yaml_list_plain():
    assert parse_yaml_list('- Alpha\n- "Beta: gamma"\n') == ["Alpha", "Beta: gamma"]


def test_parse_yaml_list_fenced_with_chatter():
    assert parse_yaml_list("Here you go:\n```yaml\n- Alpha\n- Beta\n```\nDone.") == ["Alpha", "Beta"]


def test_parse_yaml_list_numbers_become_strings():
    assert parse_yaml_list("- 1984\n- 2.5\n- Alpha") == ["1984", "2.5", "Alpha"]


def test_parse_yaml_list_flow_and_empty():
    assert parse_yaml_list('["a", "b"]') == ["a", "b"]
    assert parse_yaml_list("[]") == []


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("- a\n - b\n  c: [", "not valid YAML"),
        ("key: [unclosed", "not valid YAML"),
        ("just a sentence", "not a list"),
        ("a: 1\nb: 2", "not a list"),
        ("", "not a list"),
        ("- a\n- b: c", "item 1 is a dict"),
        ("- a\n- [b, c]", "item 1 is a list"),
        ("- yes", "item 0 is a bool"),
        ("- a\n- null", "item 1 is a NoneType"),
    ],
)
def test_parse_yaml_list_malformed(text, match):
    with pytest.raises(ParseError, match=match):
        parse_yaml_list(text)


# --- check_substrings ---------------------------------------------------------------------


def test_check_substrings_passes_items_through():
    original = "1. Photosynthesis in plants\n2. Gravity"
    items = ["Photosynthesis in plants", "Gravity"]
    assert check_substrings(items, original) is items


def test_check_substrings_empty_items():
    assert check_substrings([], "anything") == []


def test_check_substrings_names_first_hallucination():
    with pytest.raises(ParseError, match="'Tides'"):
        check_substrings(["Gravity", "Tides", "Moons"], "Gravity and stuff")


def test_check_substrings_is_case_sensitive():
    with pytest.raises(ParseError, match="hallucinated"):
        check_substrings(["gravity"], "Gravity")


# --- trim ---------------------------------------------------------------------------------


def test_trim():
    items = ["a", "b", "c"]
    assert trim(items, 2) == ["a", "b"]
    assert trim(items, None) == ["a", "b", "c"]
    assert trim(items, None) is not items
    assert trim(items, 0) == []
    assert trim(items, 10) == ["a", "b", "c"]
    assert trim((), 3) == []


def test_trim_negative():
    with pytest.raises(ValueError):
        trim(["a"], -1)


# --- parse_qa_pairs / format_qa_pairs -----------------------------------------------------


def test_parse_qa_pairs_nemotron_cc_output():
    text = (
        "Here are the questions and answers based on the provided text:\n"
        "- Question: What is the capital of France?\n"
        "Answer: Paris.\n"
        "- Question: Which river flows through it?\n"
        "Answer: The Seine.\n"
    )
    assert parse_qa_pairs(text, 5) == [
        ("What is the capital of France?", "Paris."),
        ("Which river flows through it?", "The Seine."),
    ]


def test_parse_qa_pairs_keeps_the_first_max():
    text = "Question: Q1\nAnswer: A1\n\nQuestion: Q2\nAnswer: A2\n\nQuestion: Q3\nAnswer: A3"
    assert parse_qa_pairs(text, 2) == [("Q1", "A1"), ("Q2", "A2")]
    assert parse_qa_pairs(text, 1) == [("Q1", "A1")]


def test_parse_qa_pairs_numbered_and_bold():
    text = (
        "1. **Question:** Why is the sky blue?\n"
        "   **Answer:** Rayleigh scattering.\n\n"
        "2. **Question: How far is the Moon?**\n"
        "   **Answer**: About 384,000 km.\n\n"
        "3) Question 3: Who?\nAnswer 3: Me."
    )
    assert parse_qa_pairs(text, 10) == [
        ("Why is the sky blue?", "Rayleigh scattering."),
        ("How far is the Moon?", "About 384,000 km."),
        ("Who?", "Me."),
    ]


def test_parse_qa_pairs_multiline_answer_and_outro():
    text = (
        "Question: List two primes.\n"
        "Answer: Two examples:\n"
        "- 2\n"
        "- 3\n"
        "\n"
        "I hope these questions help!"
    )
    assert parse_qa_pairs(text, 3) == [("List two primes.", "Two examples:\n- 2\n- 3")]


def test_parse_qa_pairs_skips_incomplete_pairs():
    text = "Question: Unanswered?\n\nAnswer: orphan answer\nQuestion: Q\nAnswer:\nQuestion: Q2\nAnswer: A2"
    # "Answer: orphan answer" belongs to the unanswered question; "Q" has an empty answer.
    assert parse_qa_pairs(text, 5) == [("Unanswered?", "orphan answer"), ("Q2", "A2")]


def test_parse_qa_pairs_answer_without_question_is_ignored():
    assert parse_qa_pairs("Answer: stray\nmore stray\nQuestion: Q\nAnswer: A", 5) == [("Q", "A")]


@pytest.mark.parametrize(
    "text",
    ["", "No questions here.", "Question: only a question?", "Answer: only an answer", "Q: short form\nA: nope"],
)
def test_parse_qa_pairs_none_raises(text):
    with pytest.raises(ParseError, match="no Question/Answer pairs"):
        parse_qa_pairs(text, 3)


def test_parse_qa_pairs_bad_max():
    with pytest.raises(ValueError):
        parse_qa_pairs("Question: Q\nAnswer: A", 0)


def test_format_qa_pairs():
    out = format_qa_pairs("The document.", [("Q1?", "A1."), ("Q2?", "A2.")])
    assert out == "The document.\n\nQuestion: Q1?\nAnswer: A1.\n\nQuestion: Q2?\nAnswer: A2."


def test_format_qa_pairs_round_trip():
    pairs = [("Q1?", "A1."), ("Q2?", "A2.")]
    out = format_qa_pairs("Doc", pairs)
    assert parse_qa_pairs(out.split("\n\n", 1)[1], 5) == pairs


def test_format_qa_pairs_empty():
    with pytest.raises(ValueError):
        format_qa_pairs("Doc", [])


# --- clean_knowledge_list -----------------------------------------------------------------


def test_clean_knowledge_list_drops_preamble_and_markers():
    text = "Here is the list:\n- Water boils at 100 C at sea level.\n  - Pressure lowers it.\n\n- Ice floats.\n"
    assert clean_knowledge_list(text) == "Water boils at 100 C at sea level.\nPressure lowers it.\nIce floats."


def test_clean_knowledge_list_keeps_first_line_when_it_is_an_item():
    assert clean_knowledge_list("1. First fact\n2) Second fact\n* Third") == "First fact\nSecond fact\nThird"


def test_clean_knowledge_list_plain_continuation_lines():
    assert clean_knowledge_list("\n\n- Fact one\n  continued\nFact two") == "Fact one\ncontinued\nFact two"


@pytest.mark.parametrize("text", ["", "   \n\n", "Here is the list:", "Here is the list:\n-\n  \n- "])
def test_clean_knowledge_list_empty_raises(text):
    with pytest.raises(ParseError, match="empty"):
        clean_knowledge_list(text)


# --- parse_yes_no -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["Yes", "yes.", "  YES, because...", "y", "True", "**Yes**", "> yes", '"Yes"', "- Yes", "Answer: Yes", "`true`"],
)
def test_parse_yes_no_true(text):
    assert parse_yes_no(text) is True


@pytest.mark.parametrize("text", ["No", "no.", "\n\nNO - it is not", "n", "false", "**No.** It isn't.", "Final answer: no"])
def test_parse_yes_no_false(text):
    assert parse_yes_no(text) is False


@pytest.mark.parametrize("text", ["", "   ", "Maybe", "Yellow", "Nope", "yesterday", "It depends; yes and no.", "42", None])
def test_parse_yes_no_undecidable(text):
    assert parse_yes_no(text) is None
