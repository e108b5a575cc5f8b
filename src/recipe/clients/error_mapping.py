"""Translate litellm's (and the transport's) exceptions into the package's own, in one place.

litellm's exceptions do not survive pickling and may carry request details; ours pickle,
carry only the provider's message, and are redacted of the API key.
"""

from __future__ import annotations

import asyncio
import json

from recipe import errors
from recipe.redaction import redact

MESSAGE_LIMIT = 500  # characters of the provider's message an error keeps (after redaction)

# Checked in order: subclasses before their bases. Names are looked up on litellm lazily
# so that importing this module does not import litellm.
_LITELLM_TABLE: list[tuple[str, type[errors.LLMError]]] = [
    ("ContextWindowExceededError", errors.ContextWindowError),
    ("UnsupportedParamsError", errors.UnsupportedParamError),
    ("AuthenticationError", errors.AuthenticationError),
    ("PermissionDeniedError", errors.AuthenticationError),
    ("RateLimitError", errors.RateLimitError),
    ("Timeout", errors.RequestTimeoutError),
    ("APIConnectionError", errors.EndpointConnectionError),
    ("APIResponseValidationError", errors.MalformedResponseError),
    ("ServiceUnavailableError", errors.ServerError),
    ("BadGatewayError", errors.ServerError),
    ("InternalServerError", errors.ServerError),
    ("NotFoundError", errors.BadRequestError),
    ("UnprocessableEntityError", errors.BadRequestError),
    ("BadRequestError", errors.BadRequestError),
]

_CONNECTION_HINTS = ("connection error", "connection refused", "cannot connect", "server disconnected",
                     "connection reset", "remoteprotocolerror", "peer closed", "connecterror")
# The OpenAI SDK refuses to send without a key and litellm reports that as a server error.
_MISSING_KEY_HINTS = ("api_key client option must be set", "missing credentials")
_MALFORMED_HINTS = ("jsondecodeerror", "expecting value", "invalid json", "unterminated string",
                    "validation error", "unable to parse", "invalid response object")


def _retry_after(exc: BaseException) -> float | None:
    """Read the server's Retry-After header (seconds form) if the exception carries one."""
    for holder in (getattr(exc, "response", None), exc):
        headers = getattr(holder, "headers", None) or getattr(exc, "litellm_response_headers", None)
        if not headers:
            continue
        value = headers.get("retry-after") or headers.get("Retry-After")
        if value is not None:
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None
    return None


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    # litellm prefixes messages with its own class path; keep the provider's words.
    # (it may nest them: "litellm.BadRequestError: litellm.ContextWindowExceededError: ...").
    while text.lower().startswith("litellm.") and ": " in text:
        text = text.split(": ", 1)[1]
    text = text.split("Traceback (most recent call last)", 1)[0]  # litellm may append one
    return " ".join(text.split())  # cut only once redacted (translate)


def translate(exc: BaseException, *, provider: str, secrets: tuple[str | None, ...] = ()) -> errors.LLMError:
    """Map any exception raised by a request into the package's ``LLMError`` tree."""
    if isinstance(exc, errors.LLMError):
        return exc
    message = redact(f"{provider}: {_message(exc)}", secrets, shapes=True, limit=MESSAGE_LIMIT)
    lowered = message.lower() + " " + type(exc).__name__.lower()
    target: type[errors.LLMError] | None = None
    import litellm  # already imported when a request has run

    for name, mapped in _LITELLM_TABLE:
        cls = getattr(litellm, name, None) or getattr(litellm.exceptions, name, None)
        if cls is not None and isinstance(exc, cls):
            target = mapped
            break
    if target is None:
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            target = errors.RequestTimeoutError
        elif isinstance(exc, (json.JSONDecodeError, KeyError, IndexError, AttributeError, TypeError)):
            target = errors.MalformedResponseError
        elif isinstance(exc, OSError):
            target = errors.EndpointConnectionError
    status = getattr(exc, "status_code", None)
    # litellm's generic classes say little: the message says more (its ollama route, for one,
    # reports a reply cut short as APIConnectionError)
    if target in (None, errors.ServerError, errors.BadRequestError, errors.EndpointConnectionError):
        if any(h in lowered for h in _MISSING_KEY_HINTS):
            target = errors.AuthenticationError
        elif any(h in lowered for h in _CONNECTION_HINTS) and status in (None, 500):
            target = errors.EndpointConnectionError
        elif any(h in lowered for h in _MALFORMED_HINTS) and target is not errors.BadRequestError:
            target = errors.MalformedResponseError
    if status in (401, 403) and target is not errors.RateLimitError:
        # litellm raises a plain APIError for some 403s: refused is refused, for every record
        target = errors.AuthenticationError
    if target is None:
        target = errors.ServerError if (status is None or status >= 500) else errors.BadRequestError
    return target(message, _retry_after(exc))
