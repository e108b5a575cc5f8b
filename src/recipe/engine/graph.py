"""The run's Dask graph from its stages: every stage up to the last, then the write stage over the
partitions an attempt does. One place builds it, for the attempt's plan, its execution and the target's waves."""

from __future__ import annotations


def until_last(stages: list, input_plan: list | None):
    """The graph of every stage but the last (the read stage on the run's fixed plan), and the last
    stage (None for a one-stage recipe)."""
    from recipe.stages.io.read import ReadStage

    first, *rest = stages
    bag = first.read(input_plan) if isinstance(first, ReadStage) and input_plan is not None else first(None)
    middle, last = (rest[:-1], rest[-1]) if rest else ([], None)
    for stage in middle:
        bag = stage(bag)
    return bag, last


def partitions(stages: list, input_plan: list | None, folder, config_hash: str,
               retry_failed: bool) -> tuple[list[int], dict, int]:
    """(partitions to do, the committed ones kept, of how many), from the run folder's manifests."""
    from recipe.stages.io.write import WriteStage

    bag, last = until_last(stages, input_plan)
    if isinstance(last, WriteStage):
        todo, kept = folder.todo(bag.npartitions, config_hash, retry_failed)
        return todo, kept, bag.npartitions
    return list(range(bag.npartitions)), {}, bag.npartitions  # no write stage last: nothing can be skipped


def build_bag(stages: list, input_plan: list | None, todo: list[int], config_hash: str):
    """The run's graph; the write stage gets only the partitions ``todo`` (the attempt's, so the
    manifests are not read again). Built anew for the computation: the stages' specs carry what
    the attempt added (its budget ledger, its batch folder)."""
    from recipe.stages.io.write import WriteStage

    bag, last = until_last(stages, input_plan)
    if isinstance(last, WriteStage):
        sources = input_plan if input_plan is not None and len(input_plan) == bag.npartitions else None
        return last.write(bag, only=todo, config_hash=config_hash, sources=sources)
    return bag if last is None else last(bag)
