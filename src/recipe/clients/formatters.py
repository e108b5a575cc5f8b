"""Conversation formatters: chat turns rendered as one raw prompt.

Servers that only offer text completions need the chat turned into the exact string the
model was trained on. NemotronFormatter, Mixtral8x7BFormatter and NoFormat reproduce
NeMo Curator's formatters byte for byte; ChatTemplateFormatter renders any Hugging Face
Jinja chat template, so any model's own format can be used without a new class.

Every formatter is sent to Dask workers, so each holds only plain attributes and pickles;
compiled Jinja templates live in a module-level cache keyed by the template string.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from recipe.errors import ConfigError
from recipe.clients.conversation_formatter import ConversationFormatter

__all__ = [
    "SMOLLM2_BOS_TOKEN",
    "SMOLLM2_CHAT_TEMPLATE",
    "SMOLLM2_EOS_TOKEN",
    "ChatTemplateFormatter",
    "Mixtral8x7BFormatter",
    "NemotronFormatter",
    "NoFormat",
    "validate_alternating",
]

#: The ``chat_template`` of HuggingFaceTB/SmolLM2-135M-Instruct (ChatML with a default system turn).
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2_BOS_TOKEN = "<|im_start|>"
SMOLLM2_EOS_TOKEN = "<|im_end|>"


def validate_alternating(conv: list[dict], *, allow_system: bool = False) -> None:
    """Check that turns go user, assistant, user, ... and each has a role and content.

    Raw-prompt formats encode whose turn it is by position, so a misplaced turn would
    silently produce a prompt in which the model answers itself; fail loudly instead.
    With ``allow_system`` one leading ``system`` turn is accepted (chat templates render it).
    Indexes in messages are positions in ``conv`` itself.
    """
    if not conv:
        raise ValueError("conversation has no turns")
    start = 0
    for i, turn in enumerate(conv):
        if not isinstance(turn, Mapping) or "role" not in turn or "content" not in turn:
            raise ValueError(f"turn {i} must be a dict with 'role' and 'content', got {turn!r:.80}")
    if allow_system and conv[0]["role"] == "system":
        start = 1
        if len(conv) == 1:
            raise ValueError("conversation has only a system turn, expected a user turn after it")
    for i in range(start, len(conv)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        role = conv[i]["role"]
        if role != expected:
            raise ValueError(f"turn {i} has role {role!r}, expected {expected!r}")


class _AlternatingFormatter(ConversationFormatter):
    """Prefix, then each turn's content followed by a suffix chosen by its role."""

    PROMPT_PREFIX: str = ""
    USER_SUFFIX: str = ""
    ASSISTANT_SUFFIX: str = ""

    def format_conversation(self, conv: list[dict]) -> str:
        validate_alternating(conv)
        parts = [self.PROMPT_PREFIX]
        for turn in conv:
            suffix = self.USER_SUFFIX if turn["role"] == "user" else self.ASSISTANT_SUFFIX
            parts.append(turn["content"] + suffix)
        return "".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class NemotronFormatter(_AlternatingFormatter):
    """Nemotron-4 340B Instruct's prompt format, as NeMo Curator's NemotronFormatter."""

    PROMPT_PREFIX = "<extra_id_0>System\n\n<extra_id_1>User\n"
    USER_SUFFIX = "\n<extra_id_1>Assistant\n"
    ASSISTANT_SUFFIX = "\n<extra_id_1>User\n"


class Mixtral8x7BFormatter(_AlternatingFormatter):
    """Mixtral-8x7B-Instruct's prompt format, as NeMo Curator's Mixtral8x7BFormatter."""

    PROMPT_PREFIX = "<s> [INST] \n"
    USER_SUFFIX = " [/INST]"
    ASSISTANT_SUFFIX = "</s>[INST] "


class NoFormat(ConversationFormatter):
    """Send a single user message as-is: for base models prompted with raw text."""

    def format_conversation(self, conv: list[dict]) -> str:
        if len(conv) != 1:
            raise ValueError(
                f"NoFormat needs exactly one turn, a user turn; got {len(conv)} turns"
            )
        validate_alternating(conv)
        return conv[0]["content"]

    def __repr__(self) -> str:
        return "NoFormat()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


# --- Jinja chat templates -------------------------------------------------------------


class _GenerationTag(Extension):
    """Accept HF's ``{% generation %}...{% endgeneration %}`` and render its body unchanged.

    Transformers uses the tag to build assistant-token masks; for a prompt it is a no-op,
    but templates that use it would not even compile without this extension.
    """

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(format: str) -> str:  # noqa: A002 - the name HF templates use
    return datetime.now().strftime(format)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters; HF replaces it with plain json.dumps.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=64)
def _compile(chat_template: str) -> jinja2.Template:
    """Compile once per process; the cache, not the formatter, holds the unpicklable template."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(chat_template)


def _token_text(token: Any) -> str:
    """tokenizer_config.json stores special tokens as strings or AddedToken dicts."""
    if token is None:
        return ""
    if isinstance(token, Mapping):
        return str(token.get("content", ""))
    return str(token)


@dataclass(eq=True)
class ChatTemplateFormatter(ConversationFormatter):
    """Render a conversation with a Hugging Face Jinja chat template.

    Renders exactly as ``tokenizer.apply_chat_template(..., tokenize=False)`` would, so a
    completions-only server receives the prompt the model was trained on. Without a template it
    is SmolLM2's (the embedded model's), with SmolLM2's tokens where none are given: this module
    holds that template once, and ``conf/formatter/chat_template.yaml`` only names this class.
    """

    chat_template: str | None = field(default=None, repr=False)
    bos_token: str = ""
    eos_token: str = ""
    add_generation_prompt: bool = True

    def __post_init__(self) -> None:
        if self.chat_template is None:
            self.chat_template = SMOLLM2_CHAT_TEMPLATE
            self.bos_token = self.bos_token or SMOLLM2_BOS_TOKEN
            self.eos_token = self.eos_token or SMOLLM2_EOS_TOKEN
        if not isinstance(self.chat_template, str) or not self.chat_template.strip():
            raise ConfigError("chat_template must be a non-empty Jinja template string")
        try:
            _compile(self.chat_template)  # fail at config time, not on the first record
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise ConfigError(f"chat_template is not a valid Jinja template: {e}") from None

    def format_conversation(self, conv: list[dict]) -> str:
        validate_alternating(conv, allow_system=True)
        try:
            return _compile(self.chat_template).render(
                messages=[dict(turn) for turn in conv],
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=self.add_generation_prompt,
            )
        except jinja2.exceptions.TemplateError as e:  # raise_exception() or a template bug
            raise ValueError(f"chat template failed to render the conversation: {e}") from None

    @classmethod
    def from_tokenizer_config(
        cls, path_or_dict: str | os.PathLike | Mapping, add_generation_prompt: bool = True
    ) -> ChatTemplateFormatter:
        """Build from a tokenizer_config.json (a path or its parsed dict).

        When ``chat_template`` is a list of named templates, the one named ``default`` is used.
        """
        if isinstance(path_or_dict, Mapping):
            config = path_or_dict
        else:
            try:
                with open(path_or_dict, encoding="utf-8") as f:
                    config = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"cannot read tokenizer config {os.fspath(path_or_dict)!r}: {e}") from None
            if not isinstance(config, Mapping):
                raise ConfigError(f"tokenizer config {os.fspath(path_or_dict)!r} is not a JSON object")
        template = config.get("chat_template")
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
            template = named.get("default")
        if not isinstance(template, str) or not template:
            raise ConfigError("tokenizer config has no usable 'chat_template'")
        return cls(
            chat_template=template,
            bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")),
            add_generation_prompt=add_generation_prompt,
        )

    @classmethod
    def smollm2(cls, add_generation_prompt: bool = True) -> ChatTemplateFormatter:
        """SmolLM2-Instruct's ChatML template: the package's embedded default model."""
        return cls(add_generation_prompt=add_generation_prompt)
