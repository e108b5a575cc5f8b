"""The package's one exception tree.

Every error crosses Dask process boundaries, so each one pickles: constructors take
only positional arguments and ``__reduce__`` rebuilds them from ``args``.

    RecipeError
    ├── ConfigError                 a bad config, override or missing secret (user mistake)
    │   └── StageParamsError        every bad parameter of one stage, each named
    ├── InputError                  a bad input file or record (user mistake)
    ├── ParseError                  model output that could not be converted
    │   ├── SchemaError             an answer that is not valid under its schema (keeps the raw text)
    │   └── ToolCallError           tool calls not valid under the declared tools (keeps the raw calls)
    ├── Interrupted                 Ctrl-C, SIGTERM or a stop elsewhere: records in flight are not recorded
    ├── CircuitOpenError            most recent requests failed the same non-retryable way: the run stops
    ├── LocalServerError            the embedded llama.cpp server failed to start or died
    ├── HubError                    the dataset was written but pushing it to the Hub failed
    ├── BudgetExhausted             the budget cannot pay the next request (not sent)
    └── LLMError                    a request to the model failed
        ├── AuthenticationError
        ├── BadRequestError
        │   ├── ContextWindowError
        │   ├── ModelNotFoundError   the endpoint has no such model (404)
        │   └── UnsupportedParamError
        ├── RateLimitError           retryable
        ├── RequestTimeoutError      retryable: no complete answer within backend.timeout
        ├── EndpointConnectionError  retryable: the endpoint could not be reached or dropped the connection
        ├── ServerError              retryable (5xx)
        ├── ConflictError            retryable (409, as the OpenAI SDK retries it)
        ├── MalformedResponseError   retryable: the server's answer could not be decoded
        ├── IncompleteAnswerError    retryable: a stream that ended without a finish_reason
        ├── EmptyAnswerError         no text came back (retried only with on_truncated=retry)
        ├── TruncatedError           cut at max_tokens (retried only with on_truncated=retry)
        ├── ContentFilterError       the provider's content filter stopped the answer (per record)
        └── RefusalError             the model refused (keeps the refusal text, per record)
    InternalError                   a bug in recipe's own code (TypeError, KeyError...): never retried
"""

from __future__ import annotations


class RecipeError(Exception):
    """Root of every error the package raises on purpose."""

    #: Whether retrying the same request may succeed.
    retryable: bool = False

    def __reduce__(self):  # pickling survives subclasses with extra attributes
        return (self.__class__, self.args, self.__dict__)


class ConfigError(RecipeError):
    """A bad config: printed as one line, never as a traceback."""


def refuse(problems: list[str]) -> None:
    """One :class:`ConfigError` naming every problem found (each once), in the CLI's one-line form;
    nothing when there is none. Every report of a config's problems is made here."""
    if problems:
        raise ConfigError("invalid config: " + "; ".join(dict.fromkeys(problems)))


class StageParamsError(ConfigError):
    """A stage's parameters that break their declared types or rules: all of them, in one error.

    ``problems`` holds ``(parameter, message)`` pairs, so a caller that builds many stages can
    report every problem of every stage, each under its own key.
    """

    def __init__(self, stage: str, problems: list):
        super().__init__(stage, [tuple(p) for p in problems])
        self.stage, self.problems = stage, [tuple(p) for p in problems]

    def __str__(self) -> str:
        return f"stage {self.stage!r}: " + "; ".join(message for _, message in self.problems)


class InputError(RecipeError):
    """A bad input file or record."""


class MissingFieldError(InputError):
    """A record lacks a field a stage reads. Always one error record, whatever
    ``ignore_conversion_failure`` says: that switch is about the model's answers, and this is the
    record's own problem (raised by :func:`recipe.stages.records.require_fields`)."""


class HubError(RecipeError):
    """The dataset was written, but pushing it to the Hugging Face Hub failed."""


class ParseError(RecipeError):
    """Model output that could not be converted into the structure a stage needs."""


class Interrupted(RecipeError):
    """The run is being stopped. A record whose work was cut short raises this instead of
    becoming an error record: it was not answered, it did not fail, and a rerun does it."""


class CircuitOpenError(RecipeError):
    """Most of the last requests failed with the same non-retryable error (a model that does not
    exist, an unsupported parameter): every other record would fail the same way."""


class LocalServerError(RecipeError):
    """The embedded llama.cpp server could not start, or stopped answering."""


class SchemaError(ParseError):
    """An answer that does not parse as JSON or does not validate; ``raw`` is the model's text."""

    def __init__(self, message: str, raw: str | None = None):
        super().__init__(message, raw)
        self.raw = raw

    def __str__(self) -> str:
        return str(self.args[0])


class ToolCallError(ParseError):
    """Tool calls that name no declared tool or whose arguments do not satisfy its parameters (or
    an answer with no call), after the last try; ``raw`` is the calls as the model sent them (JSON)."""

    def __init__(self, message: str, raw: str | None = None):
        super().__init__(message, raw)
        self.raw = raw

    def __str__(self) -> str:
        return str(self.args[0])


class BudgetExhausted(RecipeError):
    """``budget.max_usd`` / ``budget.max_tokens`` cannot cover the next request: it was not sent.

    Transient: a rerun with a larger budget does the record.
    """

    retryable = True


class LLMError(RecipeError):
    """A request to a model failed. ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message, retry_after)
        self.retry_after = retry_after

    def __str__(self) -> str:
        return str(self.args[0])


class AuthenticationError(LLMError):
    """The API key is missing, wrong or not allowed for this model."""


class BadRequestError(LLMError):
    """The provider refused the request as malformed; retrying will not help."""


class ContextWindowError(BadRequestError):
    """The prompt plus max_tokens exceeds the model's context."""


class ModelNotFoundError(BadRequestError):
    """The endpoint has no such model (HTTP 404, OpenAI's ``model_not_found``): every record would
    fail the same way there, and a ``backend.fallbacks`` model answers instead."""


class UnsupportedParamError(BadRequestError):
    """A sampling parameter the provider does not accept (for example top_k on OpenAI)."""


class RateLimitError(LLMError):
    retryable = True


class RequestTimeoutError(LLMError):
    """No complete answer within ``backend.timeout`` (named apart from the builtin ``TimeoutError``)."""

    retryable = True


class EndpointConnectionError(LLMError):
    """The endpoint refused the connection, or dropped it before answering (named apart from the
    builtin ``ConnectionError``)."""

    retryable = True


class ServerError(LLMError):
    retryable = True


class MalformedResponseError(LLMError):
    retryable = True


class ConflictError(LLMError):
    """HTTP 409: the server could not take the request now (the OpenAI SDK retries it too)."""

    retryable = True


class IncompleteAnswerError(LLMError):
    """A stream that ended (socket closed, or a clean end too early) before any ``finish_reason``:
    the answer is cut short, so it is retried and never cached."""

    retryable = True


class ContentFilterError(LLMError):
    """The provider's content filter stopped the answer (``finish_reason: content_filter``) or
    refused the prompt (a policy 400). A verdict on this record: not retried, never cached."""


class RefusalError(LLMError):
    """The model refused (``content: null`` with ``refusal``, as OpenAI answers); ``raw`` keeps the
    refusal's text for the error record. A verdict on this record: not retried, never cached."""

    def __init__(self, message: str, retry_after: float | None = None, raw: str | None = None):
        super().__init__(message, retry_after)
        self.raw = raw


class InternalError(RecipeError):
    """A bug in recipe's own code (a TypeError, KeyError, AttributeError...) while handling one
    record: one error record naming the exception and where it was raised, never retried (the
    same code fails the same way) and never blamed on the server."""

    @classmethod
    def of(cls, exc: BaseException) -> InternalError:
        """The error for ``exc``, naming its class, message and the innermost frame of recipe's code."""
        import os
        import traceback

        package = os.path.dirname(os.path.abspath(__file__))
        frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
        ours = [f for f in frames if os.path.abspath(f.filename).startswith(package + os.sep)] or frames
        where = ""
        if ours:
            frame = ours[-1]
            path = os.path.abspath(frame.filename)
            if path.startswith(package + os.sep):
                path = "recipe/" + os.path.relpath(path, package).replace(os.sep, "/")
            where = f" (at {path}:{frame.lineno} in {frame.name})"
        return cls(f"internal error: {type(exc).__name__}: {exc}{where}")


#: Exceptions that, raised by recipe's own code, are bugs (:class:`InternalError`), not the server's fault.
OWN_BUGS = (TypeError, KeyError, AttributeError, IndexError, NameError, AssertionError, ZeroDivisionError)


class EmptyAnswerError(LLMError):
    """The answer has no text (``content: null`` or ``""``): never a success, never cached.

    Retryable only when ``backend.on_truncated=retry`` says so (set per instance).
    """

    def __init__(self, message: str, retry_after: float | None = None, retryable: bool = False):
        super().__init__(message, retry_after)
        self.retryable = retryable


class TruncatedError(LLMError):
    """The answer was cut at ``max_tokens`` (``finish_reason: length``); see ``backend.on_truncated``."""

    def __init__(self, message: str, retry_after: float | None = None, retryable: bool = False):
        super().__init__(message, retry_after)
        self.retryable = retryable


#: Former names of renamed classes, as error records and stats written before the rename hold them.
FORMER_NAMES = {"TimeoutError": "RequestTimeoutError", "ConnectionError": "EndpointConnectionError"}


def error_class(name: str) -> type[RecipeError] | None:
    """The package's error class called ``name`` (or formerly so), if there is one."""
    cls = globals().get(FORMER_NAMES.get(name, name))
    return cls if isinstance(cls, type) and issubclass(cls, RecipeError) else None
