"""The process-wide state a run owns: each owner registers how to clear it, and a run clears it all.

A Dask worker, a notebook or the tests' process outlives one run, and a few modules keep state
for the run in flight in module globals, because threads and event-loop callbacks that have no
run object in reach need them: the progress counters, the breakers, the clients, the usage
counter, the batch states, the cancelled flag. Each such module registers its reset next to its
state with :func:`per_run`; :func:`new_run` calls them all, in every process the run uses
(``recipe.engine.cluster``), so no list elsewhere has to remember them. A module not imported in a
process holds no state there and needs no reset.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

_resets: dict[str, Callable[[], None]] = {}
_lock = threading.Lock()


def per_run(reset: Callable[[], None]) -> Callable[[], None]:
    """Register ``reset`` (a decorator): it clears its module's state when a new run starts here."""
    with _lock:
        _resets[f"{reset.__module__}.{reset.__qualname__}"] = reset
    return reset


def new_run() -> None:
    """A run starts in this process: clear every registered owner's state."""
    with _lock:
        resets = list(_resets.values())
    for reset in resets:
        reset()
