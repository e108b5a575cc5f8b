"""A circuit breaker per stage: stop a run that would only write identical error records.

A model that does not exist, an unsupported parameter or a refused endpoint fails every record
the same way. Retrying is pointless and writing one error record per input (thousands of them)
hides the one-line cause, so when most of a stage's last requests failed with the same
non-retryable class the stage raises :class:`~recipe.errors.CircuitOpenError` and the run stops.
What was committed stays committed: fixing the cause and running the same command resumes.
Record-specific failures never count: they say nothing about the next record. Those are a
prompt too long for the context, unparseable output, a bad input record, and every verdict on
one record's content: a refusal, a content filter or policy 400, a truncated or empty answer.
Only what every record would share (a wrong model, an unsupported parameter) counts.
"""

from __future__ import annotations

import threading
from collections import Counter, deque

from recipe import errors
from recipe.process_state import per_run

WINDOW = 20  # the last N request outcomes of a stage, in this process
THRESHOLD = 0.8  # the share of them failing the same way that stops the run


#: Outcomes about one record's content: never a sign that the next record fails the same way.
PER_RECORD = (errors.ContextWindowError, errors.ContentFilterError, errors.RefusalError, errors.EmptyAnswerError,
              errors.TruncatedError)


def _cause(exc: BaseException | None) -> str | None:
    """The class that counts against the breaker, or None for a success or a record's own failure."""
    if isinstance(exc, errors.LLMError) and not exc.retryable and not isinstance(exc, PER_RECORD):
        return type(exc).__name__
    return None


class CircuitBreaker:
    """Outcomes of a stage's last :data:`WINDOW` records that sent a request."""

    def __init__(self, stage: str, window: int = WINDOW, threshold: float = THRESHOLD):
        self.stage, self.window, self.threshold = stage, window, threshold
        self._outcomes: deque[str | None] = deque(maxlen=window)
        self._last: dict[str, str] = {}
        self._open: errors.CircuitOpenError | None = None
        self._lock = threading.Lock()

    def observe(self, exc: BaseException | None) -> None:
        """Count one record's outcome; raise :class:`CircuitOpenError` once the breaker is open."""
        cause = _cause(exc)
        with self._lock:
            if self._open is None:
                self._outcomes.append(cause)
                if cause is not None:
                    self._last[cause] = str(exc)
                    self._open = self._check()
            opened = self._open
        if opened is not None and exc is not None:
            raise opened

    def _check(self) -> errors.CircuitOpenError | None:
        if len(self._outcomes) < self.window:
            return None
        counts = Counter(c for c in self._outcomes if c is not None)
        if not counts:
            return None
        cause, count = counts.most_common(1)[0]
        if count < self.threshold * self.window:
            return None
        return errors.CircuitOpenError(
            f"stopped: {count} of the last {self.window} requests of stage {self.stage!r} failed with "
            f"{cause}: {self._last[cause]} - fix the cause and run the same command again to resume")

    def check(self) -> None:
        """Raise if the breaker is open (before a record sends its request)."""
        if self._open is not None:
            raise self._open


_breakers: dict[str, CircuitBreaker] = {}
_lock = threading.Lock()


def for_stage(stage: str) -> CircuitBreaker:
    """This process's breaker for ``stage`` (one per stage name, for the run)."""
    with _lock:
        breaker = _breakers.get(stage)
        if breaker is None:
            breaker = _breakers[stage] = CircuitBreaker(stage)
        return breaker


@per_run
def reset() -> None:
    """A new run starts with closed breakers."""
    with _lock:
        _breakers.clear()
