"""The stage protocol: a named, picklable ``Bag -> Bag`` callable over records.

Subclasses implement :meth:`Stage.process` (or, for model calls, the coroutine
:meth:`LLMStage.aprocess` per record). Error records pass through untouched. Model calls of
a partition run concurrently on the process's one event loop, bounded by the client's rolling
limit, never in fixed slices: a slow request holds one slot, not a whole batch.

The error policy, for every stage, is :func:`failure_record`: one record's exception becomes
that record's error record; only what fails every record the same way stops the run.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field, fields
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator

from recipe import errors
from recipe.clients import fallbacks
from recipe.clients import provenance as request_log
from recipe.clients.factory import ClientSpec, shared_async_client
from recipe.clients.event_loop import cancelled, check_cancelled, run_sync
from recipe.clients.tokens import context_error
from recipe.stages import breaker, conditions, params, progress
from recipe.stages.partition import Partition, carry, count_skipped, counting_filtered, dropped
from recipe.stages.records import MODEL, error_record, is_error, with_provenance

if TYPE_CHECKING:  # Dask is imported when a graph is built, not when a config is checked
    import dask.bag as db

T = TypeVar("T")
#: The record a model-call task is working on (each asyncio task has its own context).
_current_record: contextvars.ContextVar[dict | None] = contextvars.ContextVar("recipe_current_record", default=None)

# Errors that will fail every record the same way, or that stop the run: they propagate instead
# of becoming N identical error records. (Repeated model-not-found or unsupported-parameter
# answers stop the run through the stage's circuit breaker, see breaker.py.)
FATAL = (errors.AuthenticationError, errors.ConfigError, errors.Interrupted, errors.CircuitOpenError)


def failure_record(stage: str, exc: BaseException, record: Any, *, ignore_conversion_failure: bool = True) -> dict:
    """The error policy, written once: what an exception raised for one record becomes.

    - anything that is not an ``Exception`` (Ctrl-C, a cancelled task) and the :data:`FATAL`
      errors propagate: the run stops;
    - while the run is stopping, every error is an echo of the interruption (a closed
      connection, a refused future): it propagates as :class:`Interrupted`, never recorded;
    - a :class:`ParseError` stops the run when ``ignore_conversion_failure`` is false;
    - any other exception - ours, a TypeError in a template, a RecursionError - becomes the
      record's error record, and the rest of the run goes on; a bug of recipe's own code (a
      TypeError, KeyError... raised in the package) is recorded as an :class:`InternalError`
      naming the exception and the line that raised it.
    """
    if not isinstance(exc, Exception) or isinstance(exc, FATAL):
        raise exc
    if cancelled():
        raise errors.Interrupted("the run was interrupted") from None
    if isinstance(exc, errors.ParseError) and not ignore_conversion_failure:
        raise errors.ParseError(f"stage {stage!r}: {exc} "
                                "(set ignore_conversion_failure=true to record and go on)") from None
    if isinstance(exc, errors.OWN_BUGS):
        from recipe.clients.error_mapping import raised_by_recipe

        if raised_by_recipe(exc):
            exc = errors.InternalError.of(exc)
    return error_record(stage, exc, record)


@dataclass
class Stage:
    """Base of every stage. ``name`` labels the graph layer and the error records.

    A stage's parameters are its dataclass fields, typed (see :mod:`recipe.stages.params`); the
    record fields it reads and writes are :attr:`inputs` and :attr:`outputs`, so a whole chain is
    checked before the first request (:mod:`recipe.stages.chain`).
    """

    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or type(self).__name__.removesuffix("Stage").lower()
        params.check(self)

    def rules(self) -> Iterable[tuple[str, str]]:
        """``(parameter, problem)`` for each rule that ties parameters together and is broken."""
        return ()

    @property
    def inputs(self) -> set[str]:
        """Record fields this stage reads: every record must have them."""
        return set()

    @property
    def outputs(self) -> set[str]:
        """Record fields this stage writes."""
        return set()

    def provides(self, available: set[str] | None) -> set[str] | None:
        """The fields every record has after this stage, given those before (None: not known)."""
        return None if available is None else available | self.outputs

    def __call__(self, bag: db.Bag) -> db.Bag:
        return bag.map_partitions(_apply_stage, self, token=self.name)

    def process_partition(self, records: list[dict]) -> list[dict]:
        out: list[dict] = []
        for record in records:
            try:
                out.extend(self.process(record))
            except Exception as exc:
                out.append(failure_record(self.name, exc, record))
        return out

    def process(self, record: dict) -> list[dict]:
        raise NotImplementedError

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__name__, [(f.name, repr(getattr(self, f.name))) for f in fields(self)])


def _apply_stage(partition, stage: Stage) -> list[dict]:
    check_cancelled()  # a partition queued before Ctrl-C does nothing
    records = list(partition)
    good = [r for r in records if not is_error(r)]
    passed = [r for r in records if is_error(r)]
    with counting_filtered() as tally:
        out = passed + (stage.process_partition(good) if good else [])
    return carry(Partition(records, dropped(partition)), out, filtered=tally.filtered, skipped=tally.skipped, stage=stage.name)


@dataclass
class LLMStage(Stage):
    """A stage that queries the model. ``client`` is the run's spec, injected by the runner.

    ``sampling`` overrides the run's sampling keys for this stage only (for example a higher
    temperature for topic generation); ``ignore_conversion_failure`` decides whether a
    :class:`ParseError` becomes an error record (true) or stops the run (false). ``when`` sends the
    request only where the expression holds (see :mod:`recipe.stages.conditions`).
    """

    client: ClientSpec | None = None
    sampling: dict | None = field(default_factory=dict)
    ignore_conversion_failure: bool = True
    model: str | None = None  # another model for this stage (e.g. a reward model)
    backend: dict | None = field(default_factory=dict)  # backend keys to change for this stage
    when: Annotated[str | None, AfterValidator(conditions.valid)] = None
    when_false: Literal["null", "drop"] = "null"  # a record its `when` skips: output fields null, or dropped
    # Not a parameter (no annotation, so no dataclass field): the plan sets it on the run's last
    # model stage, whose answers move the progress bar.
    counts_progress = False
    # Not a parameter either: the run's `provenance: true` (stages.build) sets it on every model
    # stage, which then adds its entry to each record's `_provenance` (recipe.clients.provenance).
    provenance = False

    @property
    def spec(self) -> ClientSpec:
        """The run's client spec with this stage's model and backend changes."""
        changes = {k: v for k, v in (self.backend or {}).items()
                   if k in ClientSpec.__dataclass_fields__ and v is not None}  # null: keep the run's value
        if self.model:
            changes["model"] = self.model
        if self.client is None:
            raise errors.ConfigError(f"stage {self.name!r} needs a client spec (client=ClientSpec...)")
        return self.client.with_overrides(**changes) if changes else self.client

    def process_partition(self, records: list[dict]) -> list[dict]:
        if self.client is None:
            raise errors.ConfigError(f"stage {self.name!r} needs a client spec (client=ClientSpec...)")
        llm = shared_async_client(self.spec)  # here, in the task's thread: it may look up its Dask worker
        return run_sync(self._process_all(llm, records))

    async def attempt(self, work: Awaitable[T], record: dict) -> T | dict:
        """``await work``, or ``record``'s error record under :func:`failure_record`; the outcome
        also goes to the stage's circuit breaker, which stops the run when most requests fail alike."""
        guard = breaker.for_stage(self.name)
        try:
            guard.check()
            result = await work
        except Exception as exc:
            failed = failure_record(self.name, exc, record, ignore_conversion_failure=self.ignore_conversion_failure)
            guard.observe(exc)
            return failed
        finally:
            if asyncio.iscoroutine(work):
                work.close()  # never awaited when the breaker was already open
        guard.observe(None)
        return result

    async def _guarded(self, llm, record: dict) -> list[dict]:
        """One record's outputs, or its error record; only run-stopping errors propagate."""
        if self.when is not None:
            try:
                send = conditions.holds(self.when, record)
            except Exception as exc:  # noqa: BLE001 - the error policy decides
                return [failure_record(self.name, exc, record)]
            if not send:
                count_skipped(self.name)
                return [] if self.when_false == "drop" else [conditions.passed_over(record, self.outputs)]
        _current_record.set(record)  # this task's own context: per-record sampling draws (sampling_for)
        log = request_log.collecting() if self.provenance else None  # this task's requests, noted by the client
        noted = fallbacks.noting()  # which model of a fallback chain answers (clients/fallbacks.py)
        result = await self.attempt(self.aprocess(llm, record), record)
        out = result if isinstance(result, list) else [result]
        model = fallbacks.answered_by(noted)
        if model is not None:
            for one in out:
                if isinstance(one, dict) and not is_error(one):
                    one[MODEL] = model
        entry = request_log.entry(log) if log is not None else None
        if entry is not None:  # provenance: true, and this stage asked the model for this record
            out = [r if is_error(r) else with_provenance(r, self.name, entry) for r in out]
        return out

    async def _process_all(self, llm, records: list[dict]) -> list[dict]:
        """Every record of the partition, in order, through a sliding window of tasks.

        The window (twice the concurrency limit) keeps the client's limit busy on its own, while
        memory stays flat however large the partition: only the window's records are in flight,
        not one task per record of a 15k-record partition.
        """
        results: list[list[dict] | None] = [None] * len(records)
        # The runner marks the run's last model stage: its answers move the progress bar.
        counter = progress.start() if self.counts_progress else None
        # batch API: the whole partition is in flight at once, so that it becomes one batch
        window = asyncio.Semaphore(len(records) + 1 if getattr(llm, "batcher", None) is not None
                                   else max(16, 2 * self.spec.max_concurrency * self.spec.endpoints))
        failures: list[BaseException] = []
        pending: set[asyncio.Task] = set()

        async def run(index: int, record: dict) -> None:
            try:
                results[index] = await self._guarded(llm, record)
                if counter is not None:
                    progress.answered(counter)
            except BaseException as exc:  # a run-stopping error: stop launching, raise below
                failures.append(exc)
            finally:
                window.release()

        for index, record in enumerate(records):
            await window.acquire()
            if failures or cancelled():
                break
            task = asyncio.get_running_loop().create_task(run(index, record))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)
        check_cancelled()
        if counter is not None:
            progress.finish(counter)
        if failures:
            raise failures[0]
        done = [group for group in results if group is not None]
        if len(done) != len(records):  # every record's task ran to an outcome, or one raised above
            raise RuntimeError(f"stage {self.name!r}: {len(records) - len(done)} record(s) of the partition have no outcome")
        return [r for group in done for r in group]

    async def aprocess(self, llm, record: dict) -> list[dict]:
        raise NotImplementedError

    def sampling_for(self, **extra: Any) -> dict:
        """The run's sampling, this stage's overrides, then per-call values (e.g. ``n``)."""
        params = self.spec.sampling_params
        params.update({k: v for k, v in (self.sampling or {}).items()})
        params.update(extra)
        from recipe.stages.samplers.per_request import draw

        return draw(params, self.name, _current_record.get())  # a distribution: this record's value

    async def ask(self, llm, messages: list[dict], **extra: Any) -> list[str]:
        """One model query with this stage's sampling; the prompt is checked against the context."""
        return [a.text for a in await self.ask_answers(llm, messages, **extra)]

    async def ask_answers(self, llm, messages: list[dict], **extra: Any) -> list:
        """:meth:`ask`, each answer with its reasoning apart (``Answer.text``, ``Answer.reasoning``)."""
        params = self.sampling_for(**extra)
        self._check_context(messages, params.get("max_tokens"))
        spec = self.spec
        return await llm.query_answers(messages=messages, model=spec.model,
                                       conversation_formatter=spec.conversation_formatter, **params)

    def _check_context(self, messages: list[dict], max_tokens: int | None) -> None:
        # What clearly cannot fit is caught here, for free; what the estimate misses, the server
        # refuses and the client maps to the same error. With fallbacks the chain checks each of
        # its models (recipe.clients.fallbacks): a prompt too long for one may fit the next.
        if self.spec.fallbacks:
            return
        too_long = context_error(messages, max_tokens, self.spec.context_length)
        if too_long is not None:
            raise too_long
