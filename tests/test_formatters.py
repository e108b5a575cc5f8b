"""Conversation formatters: exact prompt strings, turn validation and pickling."""

from __future__ import annotations

import json
import pickle
import re

import pytest

from recipe.errors import ConfigError
from recipe.clients.conversation_formatter import ConversationFormatter
from recipe.clients.formatters import (
    SMOLLM2_CHAT_TEMPLATE,
    ChatTemplateFormatter,
    Mixtral8x7BFormatter,
    NemotronFormatter,
    NoFormat,
    validate_alternating,
)

U1 = {"role": "user", "content": "What is 2+2?"}
A1 = {"role": "assistant", "content": "4."}
U2 = {"role": "user", "content": "And 3+3?"}
SYS = {"role": "system", "content": "Be terse."}
THREE_TURNS = [U1, A1, U2]

SMOLLM2_DEFAULT_SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
)


# --- validation ---------------------------------------------------------------------------


def test_validate_accepts_alternating():
    validate_alternating(THREE_TURNS)
    validate_alternating([SYS, U1], allow_system=True)


@pytest.mark.parametrize(
    ("conv", "message"),
    [
        ([U1, U2], "turn 1 has role 'user', expected 'assistant'"),
        ([U1, A1, A1], "turn 2 has role 'assistant', expected 'user'"),
        ([A1], "turn 0 has role 'assistant', expected 'user'"),
        ([SYS, U1], "turn 0 has role 'system', expected 'user'"),
        ([U1, A1, {"role": "tool", "content": "x"}], "turn 2 has role 'tool', expected 'user'"),
    ],
)
def test_validate_rejects_bad_order(conv, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_alternating(conv)


def test_validate_system_turn_shifts_the_expected_roles():
    with pytest.raises(ValueError, match=re.escape("turn 2 has role 'user', expected 'assistant'")):
        validate_alternating([SYS, U1, U2], allow_system=True)
    with pytest.raises(ValueError, match=re.escape("turn 1 has role 'system', expected 'user'")):
        validate_alternating([SYS, SYS, U1], allow_system=True)
    with pytest.raises(ValueError, match="only a system turn"):
        validate_alternating([SYS], allow_system=True)


@pytest.mark.parametrize("conv", [[], [{"role": "user"}], ["hello"], [U1, {"content": "x"}]])
def test_validate_rejects_malformed(conv):
    with pytest.raises(ValueError):
        validate_alternating(conv)


# --- Nemotron / Mixtral / NoFormat --------------------------------------------------------


def test_nemotron_three_turns():
    assert NemotronFormatter().format_conversation(THREE_TURNS) == (
        "<extra_id_0>System\n\n<extra_id_1>User\n"
        "What is 2+2?\n<extra_id_1>Assistant\n"
        "4.\n<extra_id_1>User\n"
        "And 3+3?\n<extra_id_1>Assistant\n"
    )


def test_nemotron_single_turn():
    assert NemotronFormatter().format_conversation([U1]) == (
        "<extra_id_0>System\n\n<extra_id_1>User\nWhat is 2+2?\n<extra_id_1>Assistant\n"
    )


def test_mixtral_three_turns():
    assert Mixtral8x7BFormatter().format_conversation(THREE_TURNS) == (
        "<s> [INST] \nWhat is 2+2? [/INST]4.</s>[INST] And 3+3? [/INST]"
    )


def test_mixtral_ending_with_assistant():
    assert Mixtral8x7BFormatter().format_conversation([U1, A1]) == (
        "<s> [INST] \nWhat is 2+2? [/INST]4.</s>[INST] "
    )


@pytest.mark.parametrize("cls", [NemotronFormatter, Mixtral8x7BFormatter])
def test_alternating_formatters_reject_bad_turns(cls):
    with pytest.raises(ValueError, match=re.escape("turn 1 has role 'user', expected 'assistant'")):
        cls().format_conversation([U1, U2])
    with pytest.raises(ValueError, match="turn 0 has role 'system'"):
        cls().format_conversation([SYS, U1])


def test_noformat_returns_content():
    assert NoFormat().format_conversation([U1]) == "What is 2+2?"


@pytest.mark.parametrize("conv", [[], [U1, A1], THREE_TURNS])
def test_noformat_needs_exactly_one_turn(conv):
    with pytest.raises(ValueError, match="exactly one turn"):
        NoFormat().format_conversation(conv)


@pytest.mark.parametrize("turn", [A1, SYS])
def test_noformat_needs_a_user_turn(turn):
    with pytest.raises(ValueError, match="expected 'user'"):
        NoFormat().format_conversation([turn])


# --- ChatTemplateFormatter ----------------------------------------------------------------


def test_smollm2_single_user_turn_with_generation_prompt():
    text = ChatTemplateFormatter.smollm2().format_conversation([U1])
    assert text == (
        SMOLLM2_DEFAULT_SYSTEM
        + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        + "<|im_start|>assistant\n"
    )


def test_smollm2_three_turns():
    text = ChatTemplateFormatter.smollm2().format_conversation(THREE_TURNS)
    assert text == (
        SMOLLM2_DEFAULT_SYSTEM
        + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        + "<|im_start|>assistant\n4.<|im_end|>\n"
        + "<|im_start|>user\nAnd 3+3?<|im_end|>\n"
        + "<|im_start|>assistant\n"
    )


def test_smollm2_own_system_turn_replaces_default():
    text = ChatTemplateFormatter.smollm2().format_conversation([SYS, U1])
    assert text == (
        "<|im_start|>system\nBe terse.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_smollm2_without_generation_prompt():
    f = ChatTemplateFormatter.smollm2(add_generation_prompt=False)
    assert f.format_conversation([U1]) == SMOLLM2_DEFAULT_SYSTEM + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    assert (f.bos_token, f.eos_token) == ("<|im_start|>", "<|im_end|>")


def test_chat_template_rejects_bad_turns():
    with pytest.raises(ValueError, match=re.escape("turn 2 has role 'user', expected 'assistant'")):
        ChatTemplateFormatter.smollm2().format_conversation([SYS, U1, U2])


def test_chat_template_trims_blocks_and_uses_tokens():
    template = (
        "{{ bos_token }}\n"
        "{% for m in messages %}\n"
        "    {% if m['role'] == 'user' %}\n"
        "[U]{{ m['content'] }}\n"
        "    {% else %}\n"
        "[A]{{ m['content'] }}{{ eos_token }}\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}[A]{% endif %}"
    )
    f = ChatTemplateFormatter(template, bos_token="<s>", eos_token="</s>")
    assert f.format_conversation(THREE_TURNS) == "<s>\n[U]What is 2+2?\n[A]4.</s>\n[U]And 3+3?\n[A]"


def test_chat_template_raise_exception_becomes_value_error():
    template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}ok"
    f = ChatTemplateFormatter(template)
    assert f.format_conversation([U1]) == "ok"
    with pytest.raises(ValueError, match="no system role"):
        f.format_conversation([SYS, U1])


def test_chat_template_hf_extras():
    template = (
        "{{ strftime_now('%Y') | length }}|"
        "{{ messages[0] | tojson }}|"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}"
    )
    text = ChatTemplateFormatter(template).format_conversation([{"role": "user", "content": "é<b>"}, A1])
    assert text == '4|{"role": "user", "content": "é<b>"}|é<b>'


def test_chat_template_is_sandboxed():
    f = ChatTemplateFormatter("{{ messages.append(1) }}")
    with pytest.raises(ValueError):
        f.format_conversation([U1])


@pytest.mark.parametrize("template", ["", "   ", "{% for m in messages %}", "{{ unclosed"])
def test_chat_template_invalid_template(template):
    with pytest.raises(ConfigError):
        ChatTemplateFormatter(template)


def test_from_tokenizer_config_dict_with_addedtoken_dicts():
    config = {
        "chat_template": SMOLLM2_CHAT_TEMPLATE,
        "bos_token": {"content": "<|im_start|>", "lstrip": False},
        "eos_token": "<|im_end|>",
    }
    f = ChatTemplateFormatter.from_tokenizer_config(config)
    assert f == ChatTemplateFormatter.smollm2()


def test_from_tokenizer_config_path(tmp_path):
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps({"chat_template": "{{ bos_token }}{{ messages[0]['content'] }}", "bos_token": "<s>"}))
    f = ChatTemplateFormatter.from_tokenizer_config(path, add_generation_prompt=False)
    assert f.eos_token == ""
    assert f.add_generation_prompt is False
    assert f.format_conversation([U1]) == "<s>What is 2+2?"
    assert ChatTemplateFormatter.from_tokenizer_config(str(path)) == ChatTemplateFormatter(
        "{{ bos_token }}{{ messages[0]['content'] }}", bos_token="<s>"
    )


def test_from_tokenizer_config_named_templates():
    config = {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}
    assert ChatTemplateFormatter.from_tokenizer_config(config).chat_template == "D"


@pytest.mark.parametrize(
    "config",
    [{}, {"chat_template": None}, {"chat_template": 3}, {"chat_template": [{"name": "tool_use", "template": "T"}]}],
)
def test_from_tokenizer_config_without_template(config):
    with pytest.raises(ConfigError, match="chat_template"):
        ChatTemplateFormatter.from_tokenizer_config(config)


def test_from_tokenizer_config_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        ChatTemplateFormatter.from_tokenizer_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        ChatTemplateFormatter.from_tokenizer_config(bad)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(ConfigError, match="not a JSON object"):
        ChatTemplateFormatter.from_tokenizer_config(listed)


# --- pickling -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "formatter",
    [
        NemotronFormatter(),
        Mixtral8x7BFormatter(),
        NoFormat(),
        ChatTemplateFormatter.smollm2(),
        ChatTemplateFormatter("{{ eos_token }}", eos_token="</s>", add_generation_prompt=False),
    ],
    ids=lambda f: type(f).__name__,
)
def test_pickle_round_trip(formatter):
    conv = [U1]
    expected = formatter.format_conversation(conv)  # compiles any template before pickling
    clone = pickle.loads(pickle.dumps(formatter))
    assert isinstance(clone, ConversationFormatter)
    assert type(clone) is type(formatter)
    assert clone == formatter
    assert clone.format_conversation(conv) == expected
    assert vars(clone) == vars(formatter)  # plain attributes only


def test_repr_hides_the_template():
    assert "im_start|>system" not in repr(ChatTemplateFormatter.smollm2())
    assert repr(NemotronFormatter()) == "NemotronFormatter()"


def test_the_chat_template_config_is_smollm2s_template_unless_a_user_gives_one():
    from recipe import compose
    from recipe.clients.factory import ClientSpec

    shipped = ClientSpec.from_config(compose(["formatter=chat_template"])).conversation_formatter
    assert shipped == ChatTemplateFormatter.smollm2()
    assert shipped.format_conversation([U1]) == (SMOLLM2_DEFAULT_SYSTEM + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                                                 "<|im_start|>assistant\n")
    own = ClientSpec.from_config(compose(["formatter=chat_template",
                                          "formatter.chat_template='{{ bos_token }}{{ messages[0].content }}'",
                                          "formatter.bos_token='<s>'"])).conversation_formatter
    assert own.format_conversation([U1]) == "<s>What is 2+2?" and own.eos_token == ""
