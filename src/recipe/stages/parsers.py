"""Pure parsers from LLM output text to the structures pipeline stages need.

No I/O and no model calls: stages call these on a response and turn a ``ParseError`` into
a dropped or retried record, so every parser either returns a clean structure or raises.
NeMo Curator's behaviour is followed where it has one (YAML conversion, the hallucination
check); the direct list parser exists so small models that
answer in plain markdown need no second "convert to YAML" call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import yaml

from recipe.errors import ParseError

__all__ = [
    "LIST_ITEM",
    "preview",
    "check_substrings",
    "clean_items",
    "parse_list",
    "parse_yaml_list",
    "parse_yes_no",
    "trim",
]

# A list item: bullet (- * • +) or number (1. 1) (1) 1:) followed by whitespace, or alone.
LIST_ITEM = re.compile(r"^\s*(?:[-*•+]|\d{1,4}[.):]|\(\d{1,4}\))(?:\s+(?P<body>.*))?$")
# A fenced code block; the closing fence may be missing when the model ran out of tokens.
_FENCE = re.compile(r"```[ \t]*(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)(?:^[ \t]*```|\Z)", re.S | re.M)
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}


def preview(text: str) -> str:
    return repr(text[:80])


def _yaml_fence_bodies(text: str) -> list[str]:
    """Contents of ```yaml / ```yml / bare ``` blocks, in order."""
    return [m["body"] for m in _FENCE.finditer(text) if m["lang"].lower() in ("", "yaml", "yml")]


def _clean_item(item: str) -> str:
    """Strip whitespace, a wrapping **bold** and wrapping quotes, until nothing changes."""
    prev = None
    while item != prev:
        prev = item
        item = item.strip()
        if len(item) >= 4 and item.startswith("**") and item.endswith("**"):
            item = item[2:-2]
        elif len(item) >= 2 and _QUOTES.get(item[0]) == item[-1]:
            item = item[1:-1]
    return item


def _load_yaml(text: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _is_scalar(x: object) -> bool:
    return isinstance(x, (str, int, float)) and not isinstance(x, bool)


def _line_items(text: str) -> list[str]:
    items = []
    for line in text.splitlines():
        m = LIST_ITEM.match(line)
        if m:
            item = _clean_item(m["body"] or "")
            if item:
                items.append(item)
    return items


def parse_list(text: str) -> list[str]:
    """Read a bullet, numbered or YAML list straight from a model's answer.

    A YAML list of strings (fenced or not) is taken as YAML so quoting and escapes are
    honoured; otherwise list-item lines are collected and every other line (preamble,
    outro, headings) is ignored. Items lose a wrapping ``**bold**`` and quotes; empty items
    are dropped. Raises ``ParseError`` when no item is found at all.
    """
    candidates = [*_yaml_fence_bodies(text), text]
    scalar_fallback: list[str] = []
    for candidate in candidates:
        doc = _load_yaml(candidate)
        if isinstance(doc, list) and doc and all(isinstance(x, str) for x in doc):
            items = [c for c in (_clean_item(x) for x in doc) if c]
            if items:
                return items
        # YAML turns "- 1.10" into 1.1 and "- yes" into True: prefer the raw line text.
        items = _line_items(candidate)
        if items:
            return items
        if not scalar_fallback and isinstance(doc, list) and doc and all(_is_scalar(x) for x in doc):
            scalar_fallback = [c for c in (_clean_item(str(x)) for x in doc) if c]
    if scalar_fallback:  # a flow list such as [1, 2, 3]
        return scalar_fallback
    raise ParseError(f"no list items found in {preview(text)}")


def clean_items(items: Iterable[str]) -> list[str]:
    """Items of a structured list without the numbering, bullets, bold or quotes a model may
    still put inside the strings (the prompts show numbered lists); empty items are dropped."""
    out = []
    for item in items:
        m = LIST_ITEM.match(str(item))
        cleaned = _clean_item(m["body"] or "" if m else str(item))
        if cleaned:
            out.append(cleaned)
    return out


def parse_yaml_list(text: str) -> list[str]:
    """Read a YAML list of strings, as NeMo Curator's ``convert_response_to_yaml_list``.

    The text may sit in a ```yaml fence. Numbers become strings (a topic list may hold a
    year); anything else that is not a string, or a document that is not a list, raises
    ``ParseError`` because the caller asked the model for exactly a list of strings.
    """
    bodies = _yaml_fence_bodies(text)
    source = bodies[0] if bodies else text
    try:
        doc = yaml.safe_load(source)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ParseError(f"not valid YAML ({first}): {preview(text)}") from None
    if not isinstance(doc, list):
        raise ParseError(f"YAML is a {type(doc).__name__}, not a list: {preview(text)}")
    items = []
    for i, x in enumerate(doc):
        if isinstance(x, str):
            items.append(x)
        elif _is_scalar(x):
            items.append(str(x))
        else:
            raise ParseError(f"YAML list item {i} is a {type(x).__name__}, not a string: {x!r:.80}")
    return items


def check_substrings(items: list[str], original: str) -> list[str]:
    """Reject a conversion that invented text, as NeMo Curator's hallucination check.

    A YAML conversion must only restructure the original answer; one item that is not a
    substring of it means the converter model hallucinated, so the whole conversion is
    rejected. Returns ``items`` unchanged when all are present.
    """
    for item in items:
        if item not in original:
            raise ParseError(f"conversion introduced hallucinated item {item!r:.80} (not in the original)")
    return items


def trim(items: Sequence[str], n: int | None) -> list[str]:
    """Keep the first ``n`` items (all when ``n`` is None): models often over-deliver."""
    if n is None:
        return list(items)
    if n < 0:
        raise ValueError(f"n must be >= 0 or None, got {n}")
    return list(items[:n])


# --- classification -------------------------------------------------------------------

_YES = {"yes", "y", "true"}
_NO = {"no", "n", "false"}
_LEADING_NOISE = re.compile(r"^[\s\W_]*")  # whitespace, punctuation, markdown (* _ # > `)
_ANSWER_LABEL = re.compile(r"^(?:final\s+)?answer\s*[:\-]", re.I)


def parse_yes_no(text: str) -> bool | None:
    """Read a yes/no classification answer; ``None`` when it says neither.

    Looks only at the first word, after leading whitespace, punctuation and markdown (and
    an "Answer:" label), so "**Yes.** Because ..." is True and "Yellow" is undecidable.
    """
    if not isinstance(text, str):
        return None
    rest = _LEADING_NOISE.sub("", text)
    if _ANSWER_LABEL.match(rest):
        rest = _LEADING_NOISE.sub("", _ANSWER_LABEL.sub("", rest, count=1))
    m = re.match(r"[A-Za-z]+", rest)
    if not m:
        return None
    word = m.group(0).lower()
    if word in _YES:
        return True
    if word in _NO:
        return False
    return None
