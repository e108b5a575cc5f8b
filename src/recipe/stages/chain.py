"""A whole chain of stages checked before the first request: every field a stage reads is there.

Each stage declares the record fields it reads (:attr:`Stage.inputs`, templates through the
variables they use) and writes (:attr:`Stage.outputs`), as distilabel's steps do. Walking the
chain in order from what the input provides finds the stage that reads a field nothing gives
it, before any request is paid for; without this, every request up to that stage is paid
and then every record fails there.

What the input provides is read cheaply by the first stage (``ReadStage.input_fields``: the
seeds' keys, or the first record of the first input file). When it cannot be known (an
unreadable first line, a stage that is not a ReadStage first), fields that could come from the
input are not reported: the check only refuses what it knows is missing.
"""

from __future__ import annotations

from collections.abc import Sequence

from recipe.errors import ConfigError
from recipe.stages import conditions
from recipe.stages.records import RESERVED


def reads(stage) -> set[str]:
    """The record fields ``stage`` reads: its declared :attr:`inputs` and its ``when:`` condition's."""
    return set(stage.inputs) | conditions.fields(getattr(stage, "when", None))


def problems(stages: Sequence, input_fields: set[str] | None = None) -> list[str]:
    """One line per field a stage reads that no input or earlier stage provides.

    ``input_fields`` are the fields of the records entering the first stage; the first stage's own
    :meth:`provides` (a ReadStage's input fields) replaces them.
    """
    available: set[str] | None = None if input_fields is None else set(input_fields)
    found: list[str] = []
    for stage in stages:
        try:
            needed = reads(stage)
        except ConfigError as exc:  # a template that does not compile
            found.append(f"stage {stage.name!r}: {exc}")
            needed = set()
        if available is not None:
            for name in sorted(needed - available - set(RESERVED)):
                found.append(f"stage {stage.name!r} reads {name!r}, which no input or earlier stage provides")
        available = stage.provides(available)
    return found


def check(stages: Sequence) -> None:
    """Raise one :class:`ConfigError` listing every problem of the chain (see :func:`problems`)."""
    found = problems(stages)
    if found:
        raise ConfigError("; ".join(found))
