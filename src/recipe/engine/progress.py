"""What an attempt has done so far, gathered from every process of the run, and the progress
thread that shows it and saves it while the run goes on."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any, Callable


def _snapshot() -> dict:
    from recipe.clients.factory import current_limits, process_stats
    from recipe.clients import batch
    from recipe.stages import progress

    return {"usage": process_stats().as_dict(), "progress": progress.snapshot(), "batches": batch.states(),
            "limits": current_limits()}


def collect(client) -> dict:
    """This attempt's usage summed over this process and every worker, and its progress.

    Committed partitions are merged by part number, not summed: a partition Dask computed twice
    (on one worker or two) counts once.
    """
    from recipe.clients.usage import UsageStats

    snaps = [_snapshot()]
    if client is not None:
        snaps += list(client.run(_snapshot).values())
    usage = UsageStats()
    committed: dict[int, tuple[int, int]] = {}
    removed: dict[tuple[str, int], int] = {}
    live = filtered = 0
    batches: dict = {"states": {}}
    limits: dict[str, int] = {}  # per endpoint: the cluster's one limit, or the processes' limits summed
    for snap in snaps:
        for name, held in (snap.get("limits") or {}).items():
            limits[name] = max(limits.get(name, 0), held["limit"]) if held["cluster"] else \
                limits.get(name, 0) + held["limit"]
        for key, value in (snap.get("batches") or {}).items():
            if key == "states":
                for state, count in value.items():
                    batches["states"][state] = batches["states"].get(state, 0) + count
            else:
                batches[key] = batches.get(key, 0) + value
        usage.merge(snap["usage"])
        committed.update(snap["progress"]["committed"])
        removed.update(snap["progress"].get("deduplicated", {}))  # by (stage, partition), like committed
        live += snap["progress"]["live"]
        filtered += snap["progress"]["filtered"]
    deduplicated: dict[str, int] = {}
    for (stage, _), count in sorted(removed.items()):
        deduplicated[stage] = deduplicated.get(stage, 0) + count
    return {**usage.as_dict(), "filtered": filtered, "deduplicated": deduplicated, "live": live, "committed": committed,
            "batches": batches, "limits": limits,
            "records": sum(r for r, _ in committed.values()), "errors": sum(e for _, e in committed.values())}


def usage(now: dict, prices: Callable[[], Any] | None = None) -> dict:
    """An attempt's usage as saved in ``attempts/``: every counter, zero when nothing was sent,
    and ``cost_usd``, what its answers cost at the attempt's prices (``prices()``, a
    :class:`~recipe.clients.pricing.PriceTable`; left out when it gives None: priced later)."""
    from recipe.clients.pricing import used_tokens
    from recipe.clients.usage import UsageStats

    counters = {**UsageStats().as_dict(), "filtered": 0, "deduplicated": {}, "batches": {}}
    saved = {k: now.get(k, default) for k, default in counters.items()}
    tokens = saved["tokens_by_model"]
    table = prices() if prices is not None and used_tokens(tokens) else None
    if not used_tokens(tokens):
        saved["cost_usd"] = 0.0
    elif table is not None:
        saved["cost_usd"] = table.total(tokens)
    return saved


class Watcher:
    """A thread that moves the progress bar and saves this attempt's usage every few seconds.

    The bar counts the records already committed by earlier attempts, the partitions committed
    now, and the records answered so far by partitions in flight, so a first partition of 256
    records moves the bar record by record. The usage saved on the way keeps the account of an
    attempt that is killed before it ends.
    """

    def __init__(self, client, folder, attempt: dict, done_before: int, bar: bool,
                 prices: Callable[[], Any] | None = None) -> None:
        self.client, self.folder, self.attempt, self.prices = client, folder, attempt, prices
        self.done_before, self.bar = done_before, bar
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "Watcher":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _loop(self) -> None:
        bar = None
        if self.bar:
            from tqdm import tqdm

            bar = tqdm(desc="records", unit="rec", dynamic_ncols=True, file=sys.stderr, initial=self.done_before)
        last_save = time.monotonic()
        try:
            final = False
            while not final:
                final = self.stop.wait(1.0 if bar is not None else 0.5)  # one last update once stopped
                if bar is None and time.monotonic() - last_save < 5:
                    continue
                try:
                    now = collect(self.client)
                except Exception:
                    continue
                if bar is not None:
                    shown = self.done_before + now["records"] + now["errors"] + now["live"]
                    # never backwards while running (a finished partition is committed a moment later);
                    # at the end, exactly what was committed
                    bar.n = shown - now["live"] if final else max(bar.n, shown)
                    states = now["batches"]["states"]  # batch API: validating, in_progress, finalizing...
                    bar.set_postfix(failed=now["errors"], requests=now["requests"],
                                    tokens=now["prompt_tokens"] + now["completion_tokens"], refresh=False,
                                    **({"batches": " ".join(f"{k}:{v}" for k, v in sorted(states.items()))}
                                       if states else {}))
                    bar.refresh()
                if time.monotonic() - last_save >= 5:
                    last_save = time.monotonic()
                    with contextlib.suppress(OSError):
                        self.folder.save_attempt(self.attempt["attempt"], {**self.attempt, "usage": usage(now, self.prices),
                                                                           "outcome": "running"})
        finally:
            if bar is not None:
                bar.close()
