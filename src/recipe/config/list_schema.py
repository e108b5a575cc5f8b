"""The JSON schema of a list of questions or topics (``${list_schema:...}`` in the recipes).

It lives with the config because recipes name it by interpolation when they are composed; the
structured-output wire forms (:mod:`recipe.clients.structured_output`) send it like any schema.
"""

from __future__ import annotations

from typing import Any


# A list item: one line of at most N characters that starts with neither a space, a digit, a list
# marker nor punctuation, with no JSON-looking punctuation in it. Seen on SmolLM2 with bare strings:
# "1. <question>", "}, {" and "], {" as items. No backslash either: the pattern's character classes
# replace the grammar's JSON string rule, so a lone backslash would end as invalid JSON.
# llama.cpp compiles the pattern into its grammar.
_ITEM_PATTERN = '^[^ \\t\\n0-9*"{}<>\\[\\]\\\\,;:.)!?/|=+-][^\\n"{}<>\\[\\]\\\\]{0,%d}$'


def list_schema(n: int | None, min_items: int = 1, max_length: int = 200) -> dict:
    """``{"items": [string, ...]}`` with exactly ``n`` items (at least ``min_items`` if n is None)."""
    item = {"type": "string", "pattern": _ITEM_PATTERN % (max(1, int(max_length)) - 1)}
    items: dict[str, Any] = {"type": "array", "items": item, "minItems": int(n) if n else int(min_items)}
    if n:
        items["maxItems"] = int(n)
    return {"title": "list", "type": "object", "properties": {"items": items}, "required": ["items"],
            "additionalProperties": False}
