"""``target.records=N``: exactly N records in the output, paying for little more than N.

The run is computed in waves instead of all at once. Each wave writes the next partitions (in
input order) that are not committed yet, as many as the acceptance rate seen so far says are
needed, so a 50% filter over 5000 inputs with N=137 reads and asks about a few hundred inputs.
Recipes that make their own seeds (open QA, math, writing: a read stage of ``seeds``, no input
file) run whole rounds instead, each with the sampling seed shifted by the round number (new
requests, new cache keys) and its own part numbers, until N are accepted or
``target.max_rounds`` is reached.

A stage whose output for one partition depends on others (``whole_bag``: the dedup stage, which
keeps the first occurrence in input order) would pull the whole input into every wave. Each
wave is then built over the input's prefix up to its last partition instead: keeping the first
occurrence depends only on earlier records, so a committed partition stays right as the prefix
grows, and the earlier partitions' answers come from the request cache (no request is paid twice).
Seed rounds do the same over the rounds: round ``r`` is deduplicated against rounds ``0..r-1``.

Once the committed partitions hold N records, the output is trimmed in part order: the
partition where the count reaches N keeps its first records, later partitions are removed.
Their answers stay in the request cache, so a rerun (with the same or a larger N) is free where
it repeats work and gives the same records.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path
from typing import Any, Callable

from recipe.config.schema import DaskConfig, TargetConfig
from recipe.errors import ConfigError
from recipe.storage.run_folder import ERRORS, MANIFESTS, atomic_write, atomic_write_json, file_entries, part_name, sum_manifests
from recipe import storage

ROUND_FIELD = "_round"  # on the seeds of rounds after the first: their records get new ids


def partition_size(target: TargetConfig | None, configured: int) -> int:
    """Small partitions when a target is set, so that a wave overshoots N by little."""
    n = target.records if target is not None else None
    if not n:
        return configured
    return max(1, min(configured, max(8, math.ceil(n / 8))))


def _seed_rounds(stages: list) -> bool:
    from recipe.stages.io.read import ReadStage

    first = stages[0]
    return isinstance(first, ReadStage) and bool(first.seeds) and not first.path


def _shift_seed(params: dict, shift: int) -> dict:
    return {**params, "seed": (params.get("seed") or 0) + shift}


def round_stages(stages: list, number: int) -> list:
    """The recipe's stages for round ``number``: seeds marked with the round, sampling seeds shifted."""
    if number == 0:
        return stages
    from recipe.stages.base import LLMStage
    from recipe.stages.io.read import ReadStage

    out = []
    for stage in stages:
        shifted = stage
        if isinstance(stage, ReadStage):
            seeds = [{**(s if isinstance(s, dict) else {stage.seed_field: s}), ROUND_FIELD: number}
                     for s in stage.seeds]
            shifted = dataclasses.replace(stage, seeds=seeds)
        elif isinstance(stage, LLMStage) and stage.client is not None:
            client = stage.client.with_overrides(
                sampling=tuple(sorted(_shift_seed(dict(stage.client.sampling), number).items())))
            sampling = _shift_seed(stage.sampling, number) if stage.sampling and "seed" in stage.sampling else stage.sampling
            shifted = dataclasses.replace(stage, client=client, sampling=sampling)
            shifted.counts_progress = stage.counts_progress  # set on the instance by the plan
            shifted.provenance = stage.provenance  # and by the run's provenance: true
        out.append(shifted)
    return out


def _write_table(table: Any, tmp: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, tmp)


def _write_text(text: str, tmp: Path) -> None:
    tmp.write_text(text, encoding="utf-8")


class TargetRun:
    """Computes waves (or rounds) until ``n`` records are committed, then trims to exactly ``n``."""

    def __init__(self, n: int, max_rounds: int, stages: list, plan: list | None, folder, config_hash: str,
                 compute: Callable[[list], None], parallel: int, stopped: Callable[[], bool] = lambda: False):
        from recipe.stages.io.write import WriteStage

        if not isinstance(stages[-1], WriteStage):
            raise ConfigError("target.records: the recipe must end with a write stage")
        self.n, self.max_rounds = int(n), int(max_rounds)
        self.stages, self.plan, self.folder, self.config_hash = stages, plan, folder, config_hash
        self.compute, self.parallel, self.stopped = compute, max(1, parallel), stopped
        self.rounds = 0  # waves (input recipes) or seed rounds computed in this attempt
        self.dropped = 0  # records made but cut off by the trim
        self.rejected_in_trimmed = 0  # records filtered, failed or deduplicated in partitions the trim removed

    # ---- graphs ---------------------------------------------------------------------------

    def _pipeline(self, stages: list, upto: int | None = None):
        """The recipe's bag before its write stage; over the plan's first ``upto`` partitions if given."""
        from recipe.stages.io.read import ReadStage

        first, *middle, _ = stages
        plan = self.plan if upto is None or self.plan is None else self.plan[:upto]
        bag = first.read(plan) if isinstance(first, ReadStage) and plan is not None else first(None)
        for stage in middle:
            bag = stage(bag)
        return bag

    # ---- the loop -------------------------------------------------------------------------

    def committed(self) -> dict[int, dict]:
        return self.folder.manifests(self.config_hash)

    def run(self) -> dict:
        self._redo_trimmed()
        if _seed_rounds(self.stages):
            reason = self._rounds()
        else:
            reason = self._waves()
        output = self._trim()
        return self.report(output, reason)

    def _waves(self) -> str | None:
        write = self.stages[-1]
        bag = self._pipeline(self.stages)
        total = bag.npartitions
        size = self._first_wave()
        prefix = self.plan is not None and any(getattr(s, "whole_bag", False) for s in self.stages)
        while True:
            done = self.committed()
            have = sum(m.get("records", 0) for i, m in done.items() if i < total)
            if have >= self.n:
                return None
            if self.stopped():
                return "the budget was reached"
            missing = [i for i in range(total) if i not in done]
            if not missing:
                return f"every input was used ({total} partitions)"
            used = [m for i, m in done.items() if i < total]
            rate = sum(m.get("records", 0) for m in used) / len(used) if used else 0.0
            if rate > 0:  # partitions still needed at the rate seen so far, plus a tenth
                size = max(1, math.ceil((self.n - have) / rate * 1.1))
            elif used:
                size = 2 * size  # nothing accepted yet: widen
            wave = missing[:size]
            if prefix:  # a whole-bag stage: only the input up to the wave's last partition, not all of it
                bag = self._pipeline(self.stages, upto=wave[-1] + 1)
            self.compute([write.write(bag, only=wave, config_hash=self.config_hash, sources=self.plan)])
            self.rounds += 1

    def _first_wave(self) -> int:
        """Partitions of the first wave: as many as hold ``n`` inputs (at most one wave of the
        run's parallelism), as if every input made a record; later waves follow the rate seen."""
        per_partition = getattr(self.stages[0], "partition_size", None) or 1
        return max(1, min(self.parallel, math.ceil(self.n / per_partition)))

    def _rounds_upto(self, number: int, whole: int):
        """Rounds 0..``number`` as one bag up to the stage ``whole`` (which spans partitions), then
        that stage and the rest with round ``number``'s sampling: part ``r * per_round + p`` is
        round ``r``'s partition ``p``, so the dedup keeps the first occurrence in round order."""
        import dask.bag as db

        write = self.stages[-1]
        bag = db.concat([self._pipeline(round_stages(self.stages, r)[:whole] + [write]) for r in range(number + 1)])
        for stage in round_stages(self.stages, number)[whole:-1]:
            bag = stage(bag)
        return bag

    def _rounds(self) -> str | None:
        write = self.stages[-1]
        per_round = self._pipeline(self.stages).npartitions
        whole = next((i for i, s in enumerate(self.stages) if getattr(s, "whole_bag", False)), None)
        started = 0
        while True:
            done = self.committed()
            have = sum(m.get("records", 0) for m in done.values())
            if have >= self.n:
                return None
            if self.stopped():
                return "the budget was reached"
            finished = [r for r in range(self.max_rounds) if all(r * per_round + p in done for p in range(per_round))]
            pending = [r for r in range(self.max_rounds) if r not in finished]
            if not pending:
                return f"target.max_rounds={self.max_rounds} rounds were run"
            rate = sum(m.get("records", 0) for i, m in done.items() if i // per_round in finished) / len(finished) \
                if finished else 0.0
            count = max(1, math.ceil((self.n - have) / rate * 1.1)) if rate > 0 else (1 if not started else 2 * started)
            batch = pending[:count]
            bags = []
            for number in batch:
                todo = [p for p in range(per_round) if number * per_round + p not in done]
                if whole is not None:  # the rounds so far, one bag, so the dedup spans them (earlier ones cached)
                    bag = self._rounds_upto(number, whole)
                    bags.append(write.write(bag, only=[number * per_round + p for p in todo], config_hash=self.config_hash,
                                            sources=[[ROUND_FIELD, r] for r in range(number + 1) for _ in range(per_round)]))
                    continue
                bag = self._pipeline(round_stages(self.stages, number))
                bags.append(write.write(bag, only=todo, config_hash=self.config_hash,
                                        sources=[[ROUND_FIELD, number]] * per_round, part_offset=number * per_round))
            self.compute(bags)
            started = len(batch)
            self.rounds += len(batch)

    # ---- trimming -------------------------------------------------------------------------

    def _at(self, *parts: str) -> str:
        return storage.join(self.folder.root, *parts)

    def _redo_trimmed(self) -> None:
        """A partition cut by an earlier trim is done again (from the cache) if it is needed."""
        for index, manifest in self.committed().items():
            if manifest.get("trimmed_from") is not None:
                storage.remove(self._at(MANIFESTS, f"{part_name(index)}.json"))

    def _trim(self) -> int:
        """Keep the first ``n`` records in part order; returns how many the output holds."""
        kept = 0
        for index, manifest in sorted(self.committed().items()):
            records = manifest.get("records", 0)
            if kept >= self.n:
                self.dropped += records
                gone = sum_manifests({index: manifest})
                self.rejected_in_trimmed += (gone["failed"] + (gone["filtered"] or 0)
                                             + sum((gone["deduplicated"] or {}).values()))
                self._remove(index, manifest)
            elif kept + records > self.n:
                keep = self.n - kept
                self.dropped += records - keep
                self._cut(index, manifest, keep)
                kept = self.n
            else:
                kept += records
        return kept

    def _remove(self, index: int, manifest: dict) -> None:
        storage.remove(self._at(MANIFESTS, f"{part_name(index)}.json"))
        for name in manifest.get("files") or ():
            storage.remove(self._at(*name.split("/")))

    def _cut(self, index: int, manifest: dict, keep: int) -> None:
        """Keep the partition's first ``keep`` records; its manifest says it was cut (``trimmed_from``),
        so a later run that wants more does it again (see :meth:`RunFolder.todo`)."""
        good = [f for f in manifest.get("files") or () if not f.startswith(f"{ERRORS}/")]
        for name in good:
            path = self._at(*name.split("/"))
            if name.endswith(".parquet"):
                import pyarrow.parquet as pq

                with storage.open_file(path, "rb") as handle:
                    table = pq.read_table(handle).slice(0, keep)
                atomic_write(path, partial(_write_table, table))
            else:
                lines = (storage.read_text(path) or "").splitlines(keepends=True)[:keep]
                atomic_write(path, partial(_write_text, "".join(lines)))
        errors = next((f for f in manifest.get("files") or () if f.startswith(f"{ERRORS}/")), None)
        atomic_write_json(self._at(MANIFESTS, f"{part_name(index)}.json"),
                          {**manifest, "records": keep, "trimmed_from": manifest.get("records", 0),
                           "sizes": file_entries(self.folder.root, good[0] if good else None, errors)})

    # ---- the account ----------------------------------------------------------------------

    def report(self, output: int, reason: str | None) -> dict:
        return {"records": self.n, "output": output, "reached": output >= self.n, "rounds": self.rounds,
                "trimmed": self.dropped, "rejected_in_trimmed": self.rejected_in_trimmed, "max_rounds": self.max_rounds if _seed_rounds(self.stages) else None,
                "why_short": None if output >= self.n else f"{output} of {self.n} records: {reason}"}


def finish_report(report: dict, stats: dict) -> dict:
    """Adds accepted / rejected / acceptance rate from the run's counts (filters, failures, dedup)."""
    accepted = report["output"] + report["trimmed"]
    dropped = stats.get("deduplicated") or {}
    rejected = int(stats.get("filtered", 0) or 0) + int(stats.get("failed", 0) or 0) + \
        (sum(dropped.values()) if isinstance(dropped, dict) else int(dropped)) + report.get("rejected_in_trimmed", 0)
    seen = accepted + rejected
    return {**report, "accepted": accepted, "rejected": rejected,
            "acceptance_rate": round(accepted / seen, 4) if seen else None}


def run_target(target: TargetConfig, dask: DaskConfig, stages: list, plan: list | None, folder, config_hash: str,
               client: Any, stopped: Callable[[], bool]) -> dict:
    """The runner's hook: compute waves on ``client`` (or threads) and return the target's report."""
    from recipe.engine.cluster import parallelism


    def compute(bags: list) -> None:
        import dask

        if client is not None:
            client.gather(client.compute(bags))
        else:
            dask.compute(*bags)

    assert target.records is not None  # the plan has a target only when records is set
    return TargetRun(target.records, target.max_rounds, stages, plan, folder, config_hash,
                     compute, parallelism(dask), stopped).run()  # a wave keeps every worker busy


