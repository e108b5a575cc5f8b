"""The project's one token estimate, for checks made before a request (nothing is tokenized).

~4 characters a token (English text) plus 4 tokens a chat message for its role and markers.
The context check (:func:`context_error`, for ``stages/base.py`` and each model of a fallback
chain), the budget's worst-case reservation (``clients/budget.py``) and the ``tpm`` pacing
(``clients/litellm_client.py``) all use it, so they agree on what a prompt costs; the server's own count settles what the estimate misses.
"""

from __future__ import annotations

import math
from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def estimate_tokens(body: Any) -> int:
    """Prompt tokens of chat messages (a list of ``{"role", "content"}``) or of a text prompt."""
    if isinstance(body, list):
        chars = sum(len(str(m.get("content", "")) if isinstance(m, dict) else str(m)) for m in body)
        return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(body)
    return math.ceil(len(str(body or "")) / CHARS_PER_TOKEN)


def context_error(messages: Any, max_tokens: int | None, limit: int | None):
    """The :class:`~recipe.errors.ContextWindowError` of a prompt that clearly cannot fit a context of
    ``limit`` tokens with ``max_tokens`` (caught before anything is sent), or None (it may fit, or
    no limit is known); what the estimate misses, the server refuses as the same error."""
    if not limit:
        return None
    from recipe.errors import ContextWindowError

    estimate = estimate_tokens(messages) + (max_tokens or 0)
    if estimate <= limit:
        return None
    return ContextWindowError(f"prompt of about {estimate - (max_tokens or 0)} tokens plus max_tokens={max_tokens} "
                              f"exceeds the model's context of {limit} tokens")
