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
    ("ContentPolicyViolationError", errors.ContentFilterError),
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
    ("NotFoundError", errors.ModelNotFoundError),
    ("UnprocessableEntityError", errors.BadRequestError),
    ("BadRequestError", errors.BadRequestError),
]

_CONNECTION_HINTS = ("connection error", "connection refused", "cannot connect", "server disconnected",
                     "connection reset", "remoteprotocolerror", "peer closed", "connecterror")
# The OpenAI SDK refuses to send without a key and litellm reports that as a server error.
_MISSING_KEY_HINTS = ("api_key client option must be set", "missing credentials")
# A provider's content filter or safety system refusing this prompt (a policy 400): a verdict on the record.
_CONTENT_FILTER_HINTS = ("content_filter", "content_policy_violation", "content management policy",
                         "rejected as a result of our safety system", "responsibleaipolicyviolation")
_MALFORMED_HINTS = ("jsondecodeerror", "expecting value", "invalid json", "unterminated string",
                    "validation error", "unable to parse", "invalid response object")


def _retry_after(exc: BaseException) -> float | None:
    """Read the server's Retry-After header if the exception carries one: seconds, an HTTP date
    (RFC 9110, as proxies and some providers send it), or OpenAI's ``retry-after-ms``."""
    for holder in (getattr(exc, "response", None), exc):
        headers = getattr(holder, "headers", None) or getattr(exc, "litellm_response_headers", None)
        if not headers:
            continue
        millis = headers.get("retry-after-ms") or headers.get("Retry-After-Ms")
        value = headers.get("retry-after") or headers.get("Retry-After")
        if value is not None:  # a date counts from the server's own clock (its Date header), not ours
            return retry_after_seconds(value, _date(headers.get("date") or headers.get("Date")))
        if millis is not None:
            seconds = retry_after_seconds(millis)
            return None if seconds is None else seconds / 1000
    return None


def _date(value: object) -> float | None:
    """An HTTP date header as a timestamp, or None."""
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(str(value)) if value else None
    except (TypeError, ValueError, IndexError):
        return None
    return when.timestamp() if when is not None else None


def retry_after_seconds(value: object, now: float | None = None) -> float | None:
    """A Retry-After value in seconds from ``now``: a number, or an HTTP date; None when it is neither."""
    try:
        return max(0.0, float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pass
    import email.utils
    import time

    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


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
    if isinstance(exc, errors.RecipeError):
        return exc  # type: ignore[return-value]  # already ours (an InternalError included)
    if isinstance(exc, errors.OWN_BUGS) and raised_by_recipe(exc):
        return errors.InternalError.of(exc)  # type: ignore[return-value]  # our bug, not the server's
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
        elif isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError, *errors.OWN_BUGS)):
            # a failure to decode the server's answer, inside the library that read it
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
    if target in (None, errors.BadRequestError, errors.ServerError) and (
            status in (408, 409) or any(h in lowered for h in _CONTENT_FILTER_HINTS)):
        target = class_for_status(status, lowered)
    if target in (None, errors.ServerError, errors.EndpointConnectionError):
        if "stream ended before a finish_reason" in lowered:  # litellm's words for a stream cut short
            target = errors.IncompleteAnswerError
        elif "codec can't decode" in lowered:  # the OpenAI SDK reading a reply that is not UTF-8
            target = errors.MalformedResponseError
    if target is None:
        target = errors.ServerError if (status is None or status >= 500) else errors.BadRequestError
    return target(message, _retry_after(exc))


def class_for_status(status: int | None, lowered: str = "") -> type[errors.LLMError]:
    """The class an HTTP status (or an error body's code) means, given the error's words in lower case."""
    if any(h in lowered for h in _CONTENT_FILTER_HINTS):
        return errors.ContentFilterError
    if status in (401, 403):
        return errors.AuthenticationError
    if status == 408:
        return errors.RequestTimeoutError  # the OpenAI SDK retries 408 and 409
    if status == 409:
        return errors.ConflictError
    if status == 429 or "rate_limit" in lowered or "rate limit" in lowered:
        return errors.RateLimitError
    if status is None or status >= 500:
        return errors.ServerError
    if status == 404 or "model_not_found" in lowered:
        return errors.ModelNotFoundError
    return errors.BadRequestError


def raised_by_recipe(exc: BaseException) -> bool:
    """Whether ``exc`` was raised in recipe's own code (the innermost frame of its traceback)."""
    import os
    import traceback

    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    if not frames:
        return False
    package = os.path.dirname(os.path.abspath(errors.__file__)) + os.sep
    return os.path.abspath(frames[-1].filename).startswith(package)
