"""``backend.fallbacks`` at request time: the chain of models a record goes down, and the primary's breaker.

A record's request goes to the run's model (the primary) first. When the primary fails it for a
reason the record cannot get past there, the next model of the chain answers it:

- :data:`PASSED_ON`: the prompt is too long for the primary's context (refused by the server, or
  clearly too long for ``model.context_length`` before anything is sent), the primary's endpoint
  has no such model (404), or the provider's content filter stopped it;
- the primary's :class:`Breaker` is open: its last attempts failed as a dead or broken endpoint
  fails (refused connections, 5xx, timeouts, a missing model). While it is open records skip the
  primary; a record whose attempts on the primary were already under way when it opened goes on
  to the next model once they end. After a back-off one record probes the primary; a success
  closes the breaker.

Every other failure (429, a 5xx or a timeout while the primary is otherwise answering) keeps its
normal retries on the primary and, when those run out, is the record's error as without fallbacks.

Each model of the chain is a client of its own (:func:`recipe.clients.factory.shared_async_client`):
its own limits, its own cache keys (the model and endpoint are in the key), its own price for the
budget and ``cost_usd``. The stage writes which model answered into the record's ``_model``
(:func:`noting`, :func:`answered_by`).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from recipe import errors
from recipe.clients.tokens import context_error

#: A record's failures that the next model answers at once: this model can never answer it.
PASSED_ON = (errors.ContextWindowError, errors.ModelNotFoundError, errors.ContentFilterError)
#: Failed attempts that say nothing about the endpoint's health: verdicts on one record, and a 429
#: (a busy endpoint, which its own limiter slows down for).
NOT_THE_ENDPOINT = (errors.ContextWindowError, errors.ContentFilterError, errors.RefusalError,
                    errors.EmptyAnswerError, errors.TruncatedError, errors.RateLimitError)
FAILURES_TO_OPEN = 3  # failed attempts in a row, with no success between, that open the breaker
BACKOFF_SECONDS = 30.0  # open this long before one record probes the primary again (doubling)
BACKOFF_MAX = 600.0

# The models that answered the running record's requests (a list set by the stage, per record task).
_ANSWERED_BY: contextvars.ContextVar = contextvars.ContextVar("recipe_answered_by", default=None)
# Whether the running request may stop trying the primary once its breaker is open (a next model
# waits for it, and it is not the probe).
_CUT_SHORT: contextvars.ContextVar = contextvars.ContextVar("recipe_cut_short", default=False)


@dataclass(frozen=True)
class FallbackSpec:
    """One ``backend.fallbacks`` entry, its defaults filled in (``recipe.config.fallbacks.entries``);
    the key by reference (an :class:`~recipe.config.env_keys.EnvKey`), as the run's own."""

    model: str
    provider: str
    api_base: "str | tuple[str, ...] | None" = None
    api_key: Any = field(default=None, repr=False)
    context_length: int | None = None  # its price is the run's price table's (recipe.clients.pricing)


class Breaker:
    """The primary's health, from each of its attempts (the client calls :meth:`observe`)."""

    def __init__(self) -> None:
        self.failures = 0  # failed attempts in a row
        self.open_until = 0.0  # > 0: open; one record probes once this time has passed
        self.backoff = BACKOFF_SECONDS
        self.probing = False
        self.opened = 0  # how many times it opened
        self.last: errors.LLMError | None = None  # the last failure that counted
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return bool(self.open_until)

    def observe(self, error: BaseException | None) -> None:
        """One attempt's outcome: a success closes the breaker; an endpoint's failure counts."""
        with self._lock:
            if error is None:
                self.failures, self.open_until, self.backoff = 0, 0.0, BACKOFF_SECONDS
                return
            if not isinstance(error, errors.LLMError) or isinstance(error, NOT_THE_ENDPOINT):
                return
            self.failures += 1
            self.last = error
            if self.failures >= FAILURES_TO_OPEN or (self.open_until and self.probing):
                if self.open_until:  # it failed again after being out: wait longer
                    self.backoff = min(BACKOFF_MAX, self.backoff * 2)
                self.open_until = time.monotonic() + self.backoff
                self.failures = 0
                self.opened += 1

    def check(self) -> None:
        """Before each attempt on the primary (the client calls it): once the breaker is open, a
        record of a chain stops waiting for, or retrying on, the primary and goes to the next model
        (its attempts already sent end as they end)."""
        if self.open_until and _CUT_SHORT.get():
            last = self.last
            cls = type(last) if last is not None else errors.EndpointConnectionError
            raise cls(f"{last if last is not None else 'the endpoint failed'} (this model's breaker is open: "
                      "the next model answers)")

    def enter(self) -> tuple[bool, bool]:
        """``(send, probe)``: whether a record's request may go to the primary now, and whether it
        is the one probe of an open breaker whose back-off is over."""
        with self._lock:
            if not self.open_until:
                return True, False
            if self.probing or time.monotonic() < self.open_until:
                return False, False
            self.probing = True
            return True, True

    def probe_done(self) -> None:
        with self._lock:
            self.probing = False


@dataclass
class Link:
    """One model of the chain: its name, its client, its context (None: unknown)."""

    model: str
    client: Any
    context_length: int | None = None


class FallbackClient:
    """The client a stage gets when its backend has fallbacks: the same query methods, down the chain."""

    def __init__(self, links: list[Link]):
        self.links = links
        head = links[0].client
        if getattr(head, "health", None) is None:  # one breaker per primary client, whichever chain uses it
            head.health = Breaker()
        self.breaker: Breaker = head.health

    @property
    def stats(self) -> Any:
        return self.links[0].client.stats

    @property
    def batcher(self) -> Any:
        return getattr(self.links[0].client, "batcher", None)

    def __reduce__(self):
        raise TypeError("clients hold connections and are never pickled; ship the config and build one per process")

    async def query_answers(self, *, messages: Iterable, model: str, **kwargs: Any) -> list:
        """``query_answers`` of the first model of the chain that answers (``model`` is the primary's)."""
        return await self._down("query_answers", list(messages), model, kwargs)

    async def query_model(self, *, messages: Iterable, model: str, **kwargs: Any) -> list[str]:
        return [a.text for a in await self.query_answers(messages=messages, model=model, **kwargs)]

    async def query_reward_model(self, *, messages: Iterable, model: str, **kwargs: Any) -> dict:
        return await self._down("query_reward_model", list(messages), model, kwargs)

    async def _down(self, method: str, messages: list, model: str, kwargs: dict) -> Any:
        last = len(self.links) - 1
        for i, link in enumerate(self.links):
            name = model if i == 0 else link.model
            too_long = context_error(messages, kwargs.get("max_tokens"), link.context_length)
            if too_long is not None:  # clearly too long for this model: nothing is sent to it
                if i == last:
                    raise too_long
                continue
            probe = False
            if i == 0 and last:
                send, probe = self.breaker.enter()
                if not send:
                    continue
            cut = _CUT_SHORT.set(i == 0 and not probe)
            try:
                result = await getattr(link.client, method)(messages=messages, model=name, **kwargs)
            except errors.LLMError as exc:
                if i == last or not (isinstance(exc, PASSED_ON) or (i == 0 and self.breaker.is_open)):
                    raise
                continue
            finally:
                _CUT_SHORT.reset(cut)
                if probe:
                    self.breaker.probe_done()
            answered = _ANSWERED_BY.get()
            if answered is not None:
                answered.append(name)
            return result
        raise AssertionError("unreachable: the last model of the chain answers or raises")


def noting() -> list[str]:
    """Start noting, in the running task, which models answer (a fresh list, filled by the chain)."""
    answered: list[str] = []
    _ANSWERED_BY.set(answered)
    return answered


def answered_by(noted: list[str]) -> str | None:
    """The model that answered the record's last request, or None when no chain answered one."""
    return noted[-1] if noted else None
