"""Adaptive concurrency from latency (``backend.max_concurrency: auto``): the Vegas rule.

Self-hosted engines (vLLM, SGLang, NIM) never answer 429: past what they can batch, they queue.
AIMD on 429 (:class:`recipe.clients.limits.Pacer`) then gets no signal, and the only sign of
too much concurrency is latency. This module follows **TCP Vegas as Netflix concurrency-limits'
``VegasLimit`` implements it** (not Gradient2: its long-term RTT is an average that drifts up
under sustained queueing, where Vegas keeps the no-load latency):

- the no-load latency ``rtt_noload`` is the lowest latency seen (what a request costs with no
  queue in front of it);
- each window of about one round trip gives the window's median latency ``rtt``, and the
  requests queued at the server are estimated as ``queue = limit * (1 - rtt_noload / rtt)``
  (Little's law: the part of the limit that waits instead of being served);
- ``queue > beta`` (latency past the tolerance over no-load): lower the limit, by ``log10(limit)``
  or half the excess, whichever is more; ``queue < alpha`` (latency flat): raise it by one per
  round trip, as AIMD does per window of successes; in between, hold. ``alpha`` and ``beta``
  are Netflix's defaults, ``3·log10(limit)`` and ``6·log10(limit)``: the tolerance is a queue of
  that many requests, which at a limit of 20 is a latency about 1.2x to 1.4x the no-load one
  (the queue also hides the client's own gap between an answer and the next request);
- until the first sign of queueing (or a 429) the limit doubles per round trip, TCP's slow start;
- a window where fewer than half the slots were used says nothing about the server (Netflix's
  guard against upward drift when the client, not the server, is the bottleneck);
- a 429 halves the limit, once per round trip, as the fixed limit's AIMD does.

One round trip per decision, as in TCP Vegas: the requests already in flight answer for the
old limit, so deciding on each of them would overshoot; after a change, only requests sent
after it count (without this, slow start doubles once more on answers from the old limit). The class is clock-injected and free
of I/O: a process's limiter and the Dask scheduler's cluster-wide one run the same code.
"""

from __future__ import annotations

import math
from statistics import median

MIN_WINDOW_SECONDS = 0.05  # a window is at least this long (and at least MIN_WINDOW_SAMPLES samples)
MIN_WINDOW_SAMPLES = 3
INITIAL_LIMIT = 4


class LatencyLimit:
    """The Vegas state of one endpoint: ``limit`` between 1 and ``ceiling``."""

    def __init__(self, ceiling: int, initial: int = INITIAL_LIMIT):
        self.ceiling = max(1, int(ceiling))
        self.limit = float(min(self.ceiling, max(1, initial)))
        self.rtt_noload: float | None = None
        self.slow_start = True
        self.last_rtt: float | None = None  # the last window's median, for reports
        self._window: list[float] = []
        self._window_inflight = 0
        self._window_end: float | None = None
        self._changed_at = -1e18  # when the limit last changed: older requests answer for the old one

    @staticmethod
    def _log(limit: float) -> float:
        return max(1.0, math.log10(max(limit, 1.0)))

    def sample(self, rtt: float, inflight: int, now: float) -> None:
        """One successful request took ``rtt`` seconds with ``inflight`` requests outstanding
        (itself included); a window closes after about one round trip and decides once."""
        if rtt <= 0:
            return
        self.rtt_noload = rtt if self.rtt_noload is None else min(self.rtt_noload, rtt)
        if now - rtt < self._changed_at:
            return  # sent under the previous limit: it says nothing about this one
        self._window.append(rtt)
        self._window_inflight = max(self._window_inflight, inflight)
        if self._window_end is None:
            self._window_end = now + max(MIN_WINDOW_SECONDS, rtt)
        if now < self._window_end or len(self._window) < MIN_WINDOW_SAMPLES:
            return
        window_rtt, inflight_max = median(self._window), self._window_inflight
        self._window, self._window_inflight = [], 0
        self._window_end = now + max(MIN_WINDOW_SECONDS, window_rtt)
        self.last_rtt = window_rtt
        before = self.limit
        self._decide(window_rtt, inflight_max)
        if int(self.limit) != int(before):
            self._changed_at, self._window_end = now, None

    def _decide(self, rtt: float, inflight: int) -> None:
        if inflight * 2 < self.limit:
            return  # the client was the bottleneck: no evidence about the server
        limit = self.limit
        queue = limit * (1.0 - (self.rtt_noload or rtt) / rtt)
        log = self._log(limit)
        alpha, beta, threshold = 3 * log, 6 * log, log
        if queue > beta:
            self.slow_start = False
            limit -= max(log, (queue - beta) / 2)
        elif self.slow_start and queue <= threshold:
            limit *= 2
        elif queue < alpha:
            self.slow_start = False if queue > threshold else self.slow_start
            limit += 1
        self.limit = min(float(self.ceiling), max(1.0, limit))

    def dropped(self, now: float) -> None:
        """A 429 (already filtered to one per round trip by the caller): halve, end slow start."""
        self.slow_start = False
        self.limit = max(1.0, self.limit / 2.0)
        self._window, self._window_inflight, self._window_end = [], 0, None
        self._changed_at = now
