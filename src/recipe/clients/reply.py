"""What an OpenAI-style reply says, read the same way on both paths (lean HTTP and litellm).

The rules a reply must meet before its text is an answer live here, once:

- a message's ``content`` may be a string or a list of parts (Mistral's style): the text parts,
  joined, are the answer;
- a streamed answer is whole again across chunk boundaries: a character split in two chunks
  (two ``\\u`` escapes of a UTF-16 pair, or the raw UTF-8 bytes of one character, which the lean
  path keeps as ``surrogateescape`` code points) is put back together; what cannot be is a
  malformed reply, never text with a lone surrogate that no writer can encode;
- a usage number may come as a numeric string (``"5.5"``); one that is no number is not reported;
- a reply with HTTP 200 may carry ``{"error": {...}}`` instead of choices: the server's own
  message, mapped to the class its code says;
- a reasoning model's trace is never part of the answer: it is read from wherever the server put
  it (its own field, or an inline ``<think>`` block) into :class:`Answer` ``reasoning``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from recipe import errors

_SURROGATES = re.compile("[\ud800-\udfff]")
_ESCAPED_BYTES = re.compile("[\udc80-\udcff]+")  # raw bytes that were not UTF-8 alone (surrogateescape)
_PAIR = re.compile("([\ud800-\udbff])([\udc00-\udfff])")


def field(obj: Any, name: str) -> Any:
    """``obj[name]`` of a JSON dict, or the attribute of litellm's object; None when absent."""
    if isinstance(obj, dict):
        return obj.get(name)
    if obj is None or isinstance(obj, (str, bytes, int, float, list)):
        return None
    return getattr(obj, name, None)


def content_text(content: Any) -> Any:
    """A message's content as text: a string as it is, a list of parts as their text joined.

    Anything else (None, a number, an object) is returned as it is, for the caller to judge.
    """
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif field(part, "type") in (None, "text") and isinstance(field(part, "text"), str):
                texts.append(field(part, "text"))
        return "".join(texts)
    return content


def whole_text(pieces: list[str], provider: str = "") -> str:
    """The pieces of a streamed answer joined, with every character split across pieces whole again.

    Raises :class:`MalformedResponseError` when a lone surrogate remains: the server sent half a
    character (it would otherwise reach a writer that cannot encode it).
    """
    return repaired("".join(pieces), provider)


def repaired(text: str, provider: str = "") -> str:
    """``text`` with split UTF-8 bytes and split UTF-16 pairs joined; see :func:`whole_text`."""
    if not _SURROGATES.search(text):
        return text

    def from_bytes(match: re.Match) -> str:
        raw = bytes(ord(c) - 0xDC00 for c in match.group(0))
        return raw.decode("utf-8", "surrogateescape")

    # pairs first: a low surrogate may fall in the range surrogateescape uses for raw bytes
    text = _PAIR.sub(lambda m: (m.group(1) + m.group(2)).encode("utf-16-le", "surrogatepass")
                     .decode("utf-16-le"), text)
    text = _ESCAPED_BYTES.sub(from_bytes, text)
    lone = _SURROGATES.search(text)
    if lone:
        raise errors.MalformedResponseError(
            f"{provider}: the answer holds half a character (U+{ord(lone.group(0)):04X} at offset {lone.start()}); "
            "the server's text is not valid Unicode")
    return text


def usage_number(value: Any) -> int | None:
    """A token count as the server gave it: an int, a float or a numeric string (rounded up, so a
    budget never undercounts); None when it is no number (then the usage counts as not reported)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return math.ceil(number)


def usage_pair(usage: Any) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` of a reply's usage, or None when it reports none."""
    if usage is None:
        return None
    prompt, completion = usage_number(field(usage, "prompt_tokens")), usage_number(field(usage, "completion_tokens"))
    if prompt is None and completion is None:
        return None
    return prompt or 0, completion or 0


def error_in_body(reply: Any, provider: str) -> errors.LLMError | None:
    """The error a reply carries instead of choices (HTTP 200 with ``{"error": {...}}``), or None.

    The class follows the error's numeric ``code`` (or ``status``) where it gives one, as an HTTP
    status would; without one it is a server error (retried): the server's message is kept.
    """
    error = field(reply, "error")
    if not error:
        return None
    message = field(error, "message") if not isinstance(error, str) else error
    message = message if isinstance(message, str) and message else str(error)
    status = None
    for key in ("code", "status"):
        try:
            status = int(field(error, key)) if not isinstance(error, str) else None
        except (TypeError, ValueError):
            continue
        if status is not None:
            break
    kind = str(field(error, "type") or field(error, "code") or "").lower() if not isinstance(error, str) else ""
    from recipe.clients.error_mapping import class_for_status

    cls = class_for_status(status if status and 400 <= status < 600 else None, f"{kind} {message}".lower())
    return cls(f"{provider}: {message} (in an HTTP 200 reply)")


# ---- reasoning: the trace a thinking model gives beside (or before) its answer ---------------
# Servers put it in one of several places; it is read from each here, once, for both paths:
# - ``reasoning_content`` (DeepSeek; vLLM's reasoning parser up to 0.15; litellm's normalised field,
#   which is where litellm puts Anthropic's thinking blocks too), ``reasoning`` (vLLM from 0.16,
#   OpenRouter), ``thinking_blocks`` (litellm's Anthropic blocks) on a message or a stream delta;
# - an inline ``<think>...</think>`` at the start of the content (Qwen3, DeepSeek-R1 and Nemotron
#   served without a reasoning parser), one cut at max_tokens before its end (unclosed), and one
#   whose opening tag the chat template put in the prompt (the content then starts inside it).

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_REASONING_FIELDS = ("reasoning_content", "reasoning")


@dataclass(frozen=True)
class Answer:
    """One choice: the answer's text (never any reasoning), the model's reasoning if it gave any, and
    the tool calls it made (``[{"name", "arguments"}]``, arguments as the JSON text sent; None: none)."""

    text: str
    reasoning: str | None = None
    tool_calls: list | None = None


def reasoning_text(holder: Any) -> str:
    """The reasoning a message or a stream delta carries in its own field ("" when none)."""
    for name in _REASONING_FIELDS:
        value = field(holder, name)
        if isinstance(value, str) and value:
            return value
    blocks = field(holder, "thinking_blocks")
    if isinstance(blocks, list):
        return "".join(t for t in (field(b, "thinking") for b in blocks) if isinstance(t, str))
    return ""


def split_think(text: str) -> tuple[str, str | None, bool]:
    """``(answer, trace, unclosed)`` of a content that may start with an inline think block.

    ``unclosed``: the content is a think block cut before its end (then the answer is ""). A content
    without one is returned as it is, with no trace.
    """
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        body = stripped[len(THINK_OPEN):]
        end = body.find(THINK_CLOSE)
        if end < 0:
            return "", body.strip(), True
        return body[end + len(THINK_CLOSE):].lstrip(), body[:end].strip(), False
    end = text.find(THINK_CLOSE)
    if end >= 0 and THINK_OPEN not in text[:end]:  # the template opened the block in the prompt
        return text[end + len(THINK_CLOSE):].lstrip(), text[:end].strip(), False
    return text, None, False


def with_reasoning(content: Any, given: str | None) -> tuple[Any, str | None, bool]:
    """``(answer, reasoning, unclosed)``: the content without an inline think block, and the
    reasoning from the reply's own field (``given``) and the inline block together."""
    trace, unclosed = None, False
    if isinstance(content, str):
        content, trace, unclosed = split_think(content)
    parts = [p for p in ((given or "").strip(), trace) if p]  # litellm keeps the tag's newlines
    return content, "\n\n".join(parts) if parts else None, unclosed


def reasoning_tokens(usage: Any) -> int | None:
    """``completion_tokens_details.reasoning_tokens`` of a usage (part of the completion tokens
    on OpenAI-style usage); None when not reported."""
    details = field(usage, "completion_tokens_details") if usage is not None else None
    return usage_number(field(details, "reasoning_tokens")) if details is not None else None


def tool_calls_of(holder: Any) -> list[dict]:
    """A message's ``tool_calls`` as ``[{"name", "arguments"}]`` (arguments: the text sent)."""
    calls = field(holder, "tool_calls")
    out = []
    for call in calls if isinstance(calls, list) else ():
        function = field(call, "function")
        out.append({"name": field(function, "name"), "arguments": field(function, "arguments")})
    return out


def add_call_pieces(calls: dict[int, dict], delta: Any) -> None:
    """A stream delta's ``tool_calls`` pieces added to ``calls`` (per call index: name, arguments text)."""
    pieces = field(delta, "tool_calls")
    for position, piece in enumerate(pieces if isinstance(pieces, list) else ()):
        index = field(piece, "index")
        call = calls.setdefault(index if isinstance(index, int) else position, {"name": "", "arguments": ""})
        function = field(piece, "function")
        for key in ("name", "arguments"):
            value = field(function, key)
            if isinstance(value, str):
                call[key] += value


def stored_answers(answers: list[Answer]) -> list[dict]:
    """Answers as the request cache stores them: answer, reasoning and tool calls together."""
    return [{"text": a.text, "reasoning": a.reasoning, **({"tool_calls": a.tool_calls} if a.tool_calls else {})}
            for a in answers]


def cached_answers(value: Any) -> list[Answer]:
    """Answers from a cache entry; an entry written before reasoning was kept (a list of texts)
    has any inline think block taken out of its text again."""
    out = []
    for item in value:
        if isinstance(item, dict):
            out.append(Answer(item.get("text") or "", item.get("reasoning"), item.get("tool_calls")))
        else:
            text, trace, _ = with_reasoning(item, None)
            out.append(Answer(text, trace))
    return out
