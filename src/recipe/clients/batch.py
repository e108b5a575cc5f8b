"""``backend.batch=true``: requests go through the provider's batch API, at its batch price.

Stages do not change: each ``query_model`` that misses the cache hands its request to the
client's :class:`BatchCollector` and awaits the answer. The collector gathers the requests of a
partition (it flushes once no new request came for a moment), writes them as JSONL lines, each
with a ``custom_id`` that is the hash of the request, uploads the file and creates a batch with
litellm's ``acreate_file`` / ``acreate_batch``, then polls ``aretrieve_batch`` and reads the
answers with ``afile_content``.

Durability: each batch is recorded in ``<run folder>/batches/<batch id>.json`` (its custom ids)
right after it is created. A rerun after ``kill -9`` makes the same requests, hence the same
custom ids, finds them in a recorded batch and polls that batch: nothing is submitted twice.
A kill can also land while the provider creates a batch, before its id is known here. So before
creating one, the intent is recorded under an id of ours (``batches/intents/<intent>.json``) and
the batch is tagged with it: OpenAI's ``metadata`` holds it, and Anthropic's batches (which take
no metadata) carry it in every ``custom_id`` (``<intent>_<request id>``). A rerun with intents left
over asks the provider's list of batches (``GET /v1/batches``, ``GET /v1/messages/batches``) for
them before it submits anything. OpenAI's metadata names the batch exactly; an Anthropic batch is
taken by its time and size, polled, and kept only if its results carry the intent (else its
lines go out anew, and that batch is recorded as ``foreign``, never polled again).
Lines that failed, or whose batch failed or expired, are submitted again in a new batch (up to
``num_retries`` times), unless the line's error is a verdict on the request (a 4xx: context too
long, no such model, a content filter, a bad parameter): that line fails at once with the error an
online request would raise (:meth:`BatchCollector.line_error`), so ``backend.fallbacks`` passes it
to the next model as it does online. A batch API that cannot be reached or fails (5xx) before any
line of a flush is in a batch counts each line as a failed attempt for the fallback chain's
breaker (:class:`recipe.clients.fallbacks.Breaker`), so a dead primary sends the records on to
the next model; a failure while polling does not (the lines live in a batch there, and would
be paid twice). Answered lines are never sent again and go into the request cache like
any other answer. Batch states are counted per process for the progress bar.

Several replicas (``backend.api_base: [URL, ...]``): a batch lives on the replica that created it.
Each batch goes to the first replica, in the list's order, that takes the connection (one that
refuses it is passed over, so a dead first replica does not stop the run, and is tried last for
:data:`REFUSED_SECONDS`); its URL is recorded
with the intent and the batch, and a rerun polls and downloads from that URL, even if the list
changed since. Batch ids are the replica's own, so two replicas may both have a ``batch_1``:
their records are named ``<id>@<hash of the URL>``. A replica that cannot be reached while
polling fails its lines, as one endpoint does; a rerun polls the same replica again.

Anthropic (``backend.provider=anthropic``) has its own Message Batches API: the requests go
inline in one ``POST /v1/messages/batches`` (``custom_id`` + Messages ``params`` per request),
the batch is polled at ``GET /v1/messages/batches/{id}`` until ``processing_status`` is
``ended``, and the results are JSONL at its ``results_url``. :class:`AnthropicWire` speaks it
with httpx: litellm 1.110 builds no Anthropic batch (its ``transform_create_batch_request``
raises ``NotImplementedError``) and its results reader ignores ``results_url``. litellm still
builds each request's ``params`` (the provider configuration, as on the lean path) and prices
the answers at ``input/output_cost_per_token_batches`` (half the online price).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from recipe import errors, storage
from recipe.redaction import redact
from recipe.clients.error_mapping import MESSAGE_LIMIT
from recipe.clients import providers
from recipe.process_state import per_run

MAX_LINES = 50_000  # OpenAI's limits per batch: lines and input file bytes
MAX_BYTES = 190 * 1024 * 1024
ANTHROPIC_MAX_LINES = 100_000  # Anthropic's limits per Message Batch: requests and bytes
ANTHROPIC_MAX_BYTES = 256 * 1000 * 1000
ANTHROPIC_ENDPOINT = "/v1/messages"
TERMINAL = ("completed", "failed", "expired", "cancelled")
DEAD = ("failed", "expired", "cancelled", "foreign")  # recorded batches whose lines are not answered there
INTENT_KEY = "recipe_intent"  # the OpenAI batch's metadata key that names our intent
REFUSED_SECONDS = 60.0  # a replica that refused a batch's connection is tried last for this long
CLOCK_SKEW = 600.0  # seconds: the provider's clock against ours, when a listed batch is matched by time
ABSENT = "absent"  # why a line is unanswered: the batch found for an intent was another's (not a try)
# Anthropic's error types (a batch result's) as the HTTP status the online API answers them with
_ANTHROPIC_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
                     "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
                     "overloaded_error": 529}
_WIRE_ONLY = ("api_base", "api_key", "timeout", "max_retries", "allowed_openai_params", "extra_body", "stream")

_states_lock = threading.Lock()
_states: dict[str, str] = {}  # batch id -> last status seen in this process
_submitted: Counter[str] = Counter()  # "batches", "lines", "resubmitted_lines", "polled_batches", "found_batches"


def states() -> dict:
    """Batch counts by state, and what this process submitted (summed over workers by the runner)."""
    with _states_lock:
        return {"states": dict(Counter(_states.values())), **dict(_submitted)}


@per_run
def reset() -> None:
    with _states_lock:
        _states.clear()
        _submitted.clear()


def _note(batch_id: str, status: str) -> None:
    with _states_lock:
        _states[batch_id] = status


def _count(name: str, amount: int = 1) -> None:
    with _states_lock:
        _submitted[name] += amount


def custom_id(body: dict) -> str:
    """The request's identity: the same request in a rerun has the same id, hence the same batch line."""
    return "r-" + hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]


def line_body(model: str, payload: dict) -> dict:
    """The JSON body a live request would send: wire-only keys left out, ``extra_body`` merged in."""
    body = {"model": model, **{k: v for k, v in payload.items() if k not in _WIRE_ONLY}}
    body.update(payload.get("extra_body") or {})
    return body


class BatchRecords:
    """The run folder's ``batches/``: one JSON per created batch, written as soon as it exists.
    A local folder or a bucket alike: every file goes through :mod:`recipe.storage`."""

    def __init__(self, directory: str | Path) -> None:
        self.path = str(directory)

    def _read(self, path: str) -> dict | None:
        try:
            found = json.loads(storage.read_text(path) or "null")
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    def save(self, record: dict) -> None:
        from recipe.storage.run_folder import atomic_write_json

        storage.makedirs(self.path)
        atomic_write_json(storage.join(self.path, f"{_key(record)}.json"), record)

    def all(self) -> list[dict]:
        return [r for r in (self._read(path) for path in storage.listdir(self.path, "*.json")) if r is not None]

    def load(self, batch_id: str) -> dict:
        return self._read(storage.join(self.path, f"{batch_id}.json")) or {}

    # a batch about to be created: recorded first, so a kill during its creation leaves a trace
    def intend(self, intent: dict) -> None:
        from recipe.storage.run_folder import atomic_write_json

        storage.makedirs(storage.join(self.path, "intents"))
        atomic_write_json(storage.join(self.path, "intents", f"{intent['intent']}.json"), intent)

    def intents(self) -> list[dict]:
        found = (self._read(path) for path in storage.listdir(storage.join(self.path, "intents"), "*.json"))
        return [intent for intent in found if intent is not None and intent.get("intent")]

    def drop_intent(self, intent: str) -> None:
        storage.remove(storage.join(self.path, "intents", f"{intent}.json"))

    def index(self) -> dict[str, str]:
        """custom id -> the newest recorded batch holding it that did not fail or expire."""
        found: dict[str, tuple[float, str]] = {}
        for record in self.all():
            if record.get("status") in DEAD:
                continue
            for cid in record.get("custom_ids") or ():
                if cid not in found or found[cid][0] < record.get("created", 0):
                    found[cid] = (record.get("created", 0), _key(record))
        return {cid: bid for cid, (_, bid) in found.items()}


def _key(record: dict) -> str:
    """A batch's name in ``batches/``: its id, and a replica's URL hashed in (see the module's docstring)."""
    return record.get("key") or record["id"]


class BatchCollector:
    """A client's batch side: gathers requests, submits and polls batches, resolves answers."""

    def __init__(self, client: Any, directory: str | Path, poll_seconds: float = 30.0,
                 quiet_seconds: float = 0.5, completion_window: str = "24h") -> None:
        self.client = client
        self.records = BatchRecords(directory)
        self.poll_seconds = poll_seconds
        self.quiet_seconds = quiet_seconds
        self.completion_window = completion_window
        self._pending: dict[str, dict] = {}  # custom id -> {"body", "endpoint", "futures", "route", "ticket"}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()  # every partition's coroutines share the process's one loop
        self._anthropic: dict[str | None, AnthropicWire] = {}  # per replica
        # where batches are created, in order (a list of replicas: the first that takes the connection)
        self.bases: list[str | None] = list(getattr(client, "replica_urls", ()) or ()) or [None]
        self._refused: dict[str | None, float] = {}  # replica -> when it last refused a connection
        self._anthropic_routes: dict[str, Any] = {}  # model -> lean_http.LeanRoute, which builds the params

    async def request(self, route: str, model: str, payload: dict, text: bool) -> Any:
        """The provider's response body (a chat.completion or text_completion dict) for one request."""
        if providers.provider(self.client.provider).batch == "anthropic":  # the Messages API body, built by litellm's provider configuration
            try:
                body = self._anthropic_route(model).build(payload)
                body.pop("json_mode", None)  # litellm's own flag for reading the answer, never on Anthropic's wire
            except Exception as exc:  # e.g. n or seed, which Anthropic does not take: refused as online
                from recipe.clients.error_mapping import translate

                raise translate(exc, provider=self.client.provider, secrets=(self.client._api_key,)) from None
            endpoint = ANTHROPIC_ENDPOINT
        else:
            body = line_body(model, payload)
            endpoint = "/v1/completions" if text else "/v1/chat/completions"
        cid = custom_id({"route": route, "body": body})
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        entry = self._pending.get(cid)
        if entry is None:
            entry = self._pending[cid] = {"body": body, "route": route, "futures": [], "endpoint": endpoint}
        entry["futures"].append(future)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(self.quiet_seconds, self._flush)
        return await future

    def _anthropic_route(self, model: str):
        from recipe.clients.lean_http import LeanRoute

        if model not in self._anthropic_routes:
            self._anthropic_routes[model] = LeanRoute("anthropic", model)
        return self._anthropic_routes[model]

    def _wire(self, endpoint: str, base: str | None = None):
        """Who speaks to the provider's batch API for lines of ``endpoint``, at replica ``base``
        (None: the client's one endpoint)."""
        if endpoint == ANTHROPIC_ENDPOINT:
            if base not in self._anthropic:
                self._anthropic[base] = AnthropicWire(self.client, self.poll_seconds, base)
            return self._anthropic[base]
        return OpenAIWire(self, base)

    def _flush(self) -> None:
        pending, self._pending, self._timer = self._pending, {}, None
        if pending:
            task = asyncio.get_running_loop().create_task(self._run(pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # ---- one flush: find or create batches, poll them, resolve, resubmit failed lines ---------

    async def _run(self, pending: dict[str, dict]) -> None:
        unsent = False  # no pending line is in any batch: a failure now leaves nothing to be paid for
        try:
            tries: Counter = Counter()  # failed rounds per line (a line not found in another's batch: none)
            last_error: dict[str, str] = {}
            first = True
            while pending:
                batches: dict[str, list[str]] = {}
                fresh = list(pending)
                if first:  # lines an earlier attempt submitted: poll their batches, never submit again
                    first = False
                    known = self.records.index()
                    for cid in pending:
                        if cid in known:
                            batches.setdefault(known[cid], []).append(cid)
                    if batches:
                        _count("polled_batches", len(batches))
                    fresh = [cid for cid in pending if cid not in known]
                    if fresh:
                        for bid, cids in (await self._find_intended(set(fresh))).items():
                            batches.setdefault(bid, []).extend(cids)
                        claimed = {cid for cids in batches.values() for cid in cids}
                        fresh = [cid for cid in fresh if cid not in claimed]
                unsent = not batches
                for group in _split([(cid, pending[cid]) for cid in fresh]):
                    batch_id = await self._create(group, resubmitted=any(tries[cid] for cid, _ in group))
                    batches[batch_id] = [cid for cid, _ in group]
                    unsent = False
                results = await asyncio.gather(*(self._wait(bid, cids, pending) for bid, cids in batches.items()))
                failed: dict[str, dict] = {}
                for unanswered in results:
                    for cid, why in unanswered.items():
                        if isinstance(why, errors.LLMError) and not why.retryable:
                            self._fail(pending[cid], why)  # a verdict on the request: sending it again cannot help
                            continue
                        why = str(why)
                        failed[cid] = pending[cid]
                        if why != ABSENT:
                            tries[cid] += 1
                            last_error[cid] = why
                for cid in [cid for cid in failed if tries[cid] > self.client.num_retries]:
                    self._fail(failed.pop(cid), errors.ServerError(
                        f"batch line {cid} failed {tries[cid]} times: {last_error[cid]}"))
                pending = failed
        except BaseException as exc:  # never leave a record waiting forever
            error = exc if isinstance(exc, errors.RecipeError) else errors.ServerError(
                f"batch API: {type(exc).__name__}: {exc}")
            health = getattr(self.client, "health", None)  # a fallback chain's breaker on this model
            if unsent and health is not None:  # each line failed as an attempt fails: the endpoint's health
                for _ in pending:  # (told before the records hear it, so each sees the breaker as it ends)
                    health.observe(error)
            for entry in pending.values():
                self._fail(entry, error)
            if not isinstance(exc, Exception):
                raise

    async def _find_intended(self, fresh: set[str]) -> dict[str, list[str]]:
        """Batches an earlier attempt created but never recorded (killed during their creation),
        looked up at the provider by the intent they carry: batch id -> the lines of ``fresh`` in it."""
        found: dict[str, list[str]] = {}
        recorded: set | None = None  # the batches already recorded (read once, on the first intent that needs them)
        for intent in self.records.intents():
            mine = [cid for cid in intent.get("custom_ids") or () if cid in fresh]
            if not mine or not intent.get("endpoint"):
                continue
            if recorded is None:
                recorded = {record.get("id") for record in self.records.all()}
            try:
                hit = await self._wire(intent["endpoint"], intent.get("api_base")).find(intent, exclude=recorded)
            except errors.EndpointConnectionError:
                continue  # its replica is unreachable: the lines go out anew; the intent stays for a rerun
            if hit is None:
                # not created (yet): an intent older than any creation could take is dropped
                if time.time() - float(intent.get("created") or 0) > 2 * self.client.timeout + CLOCK_SKEW:
                    self.records.drop_intent(intent["intent"])
                continue
            batch_id, status = hit
            record = self._placed(batch_id, intent.get("api_base"))
            self.records.save({**record, "intent": intent["intent"], "status": status,
                               "created": intent.get("created", time.time()), "endpoint": intent["endpoint"],
                               "custom_ids": intent.get("custom_ids") or [], "found_by_intent": True})
            self.records.drop_intent(intent["intent"])
            recorded.add(batch_id)
            _note(batch_id, status)
            _count("found_batches")
            _count("polled_batches")
            found[_key(record)] = mine
            fresh.difference_update(mine)
        return found

    @staticmethod
    def _fail(entry: dict, error: BaseException) -> None:
        for future in entry["futures"]:
            if not future.done():
                future.set_exception(error)

    def _placed(self, batch_id: str, base: str | None) -> dict:
        """A record's id, name and replica: ``api_base`` and the hashed name with a list of replicas."""
        if base is None:
            return {"id": batch_id}
        return {"id": batch_id, "key": f"{batch_id}@{hashlib.sha256(base.encode()).hexdigest()[:10]}", "api_base": base}

    async def _call(self, name: str, base: str | None = None, **kwargs) -> Any:
        from recipe.clients.litellm_setup import get_litellm, unlogged

        endpoint = self.client._endpoint_kwargs(self.client.provider)
        if base is not None:  # one replica of a list
            endpoint["api_base"] = providers.api_base_for(self.client.provider, base)
        connection = {k: endpoint[k] for k in ("api_base", "api_key", "timeout") if endpoint.get(k) is not None}
        try:
            with unlogged():  # litellm's logging would fetch a completed batch's output again, to price it
                return await getattr(get_litellm(), name)(custom_llm_provider="openai", **connection, **kwargs)
        except Exception as exc:
            from recipe.clients.error_mapping import translate

            raise translate(exc, provider=self.client.provider, secrets=(self.client._api_key,)) from None

    async def _create(self, group: list[tuple[str, dict]], resubmitted: bool) -> str:
        """Create one batch of ``group`` (at the first replica that takes the connection); its name."""
        endpoint = group[0][1]["endpoint"]
        cids = [cid for cid, _ in group]
        now = time.monotonic()  # a replica that refused lately is tried last (each try costs the SDK's retries)
        bases = sorted(self.bases, key=lambda b: now - self._refused.get(b, -1e18) < REFUSED_SECONDS)
        for place, base in enumerate(bases):
            intent = "rb" + uuid.uuid4().hex[:16]  # ours: recorded before the provider hears of the batch
            created = time.time()
            self.records.intend({"intent": intent, "created": created, "endpoint": endpoint, "custom_ids": cids,
                                 **({"api_base": base} if base else {})})
            try:
                batch_id, status, extra = await self._wire(endpoint, base).create(group, endpoint, intent)
                break
            except (errors.BadRequestError, errors.AuthenticationError):
                self.records.drop_intent(intent)  # refused: no batch exists
                raise
            except errors.EndpointConnectionError:
                # unreachable: the next replica takes the batch. The intent stays (a connection lost
                # after the request went out may have created one): a rerun asks this replica for it.
                self._refused[base] = time.monotonic()
                if place + 1 == len(bases):
                    raise
                _count("failovers")
        record = self._placed(batch_id, base)
        self.records.save({**record, "intent": intent, **extra, "status": status, "created": created,
                           "endpoint": endpoint, "custom_ids": cids})
        self.records.drop_intent(intent)
        _note(batch_id, status)
        _count("batches")
        _count("lines", len(group))
        self.client.stats.count("requests", len(group))
        if resubmitted:
            _count("resubmitted_lines", len(group))
        return _key(record)

    async def _wait(self, key: str, cids: list[str], pending: dict[str, dict]) -> dict[str, Any]:
        """Poll until the batch named ``key`` ends (at the replica that has it); resolve its
        answered lines; return the others with why (a text, or the error the provider answered)."""
        record = self.records.load(key)
        batch_id = record.get("id") or key
        status, answered, reasons, ours = await self._wire(pending[cids[0]]["endpoint"], record.get("api_base")).finish(
            batch_id, record.get("intent"))
        if not ours:  # taken by its time and size, but its results carry another intent
            self._update_record(key, "foreign")
            return {cid: ABSENT for cid in cids}
        self._update_record(key, status)
        unanswered: dict[str, Any] = {}
        for cid in cids:
            entry = pending[cid]
            if cid in answered:
                for future in entry["futures"]:
                    if not future.done():
                        future.set_result(answered[cid])
            else:
                why = reasons.get(cid, f"batch {batch_id} {status}")
                unanswered[cid] = self.line_error(entry, *why) if isinstance(why, tuple) else why
        return unanswered

    def line_error(self, entry: dict, status: int, text: str) -> errors.LLMError:
        """The error a failed line answered (its HTTP status and error body) means: the one an online
        request would raise for the same answer (litellm's provider configuration, then our table)."""
        from recipe.clients.error_mapping import class_for_status, translate
        from recipe.clients.lean_http import LeanRoute

        route = "anthropic" if entry["endpoint"] == ANTHROPIC_ENDPOINT else self.client.provider
        secrets = (self.client._api_key,)
        try:
            raised = LeanRoute(route, str(entry["body"].get("model")), text=entry["route"] == "text").error_for(
                status, text)
        except Exception:  # no litellm configuration for this provider: the status and words decide
            message = redact(f"{self.client.provider}: batch line: {status} {text}", secrets, shapes=True,
                             limit=MESSAGE_LIMIT)
            return class_for_status(status, text.lower())(message)
        return translate(raised, provider=self.client.provider, secrets=secrets)

    def _update_record(self, batch_id: str, status: str) -> None:
        record = self.records.load(batch_id)
        if record and record.get("status") != status:
            self.records.save({**record, "status": status})


class OpenAIWire:
    """OpenAI's (and OpenAI-compatible) Files and Batches API, through litellm's functions."""

    def __init__(self, collector: BatchCollector, base: str | None = None) -> None:
        self.collector = collector
        self.base = base  # a replica of a list, or None: the client's endpoint

    async def _call(self, name: str, **kwargs) -> Any:
        return await self.collector._call(name, base=self.base, **kwargs)

    async def create(self, group: list[tuple[str, dict]], endpoint: str, intent: str) -> tuple[str, str, dict]:
        call = self._call
        data = "".join(json.dumps({"custom_id": cid, "method": "POST", "url": endpoint, "body": entry["body"]}) + "\n"
                       for cid, entry in group).encode()
        upload = await call("acreate_file", file=("batch.jsonl", data), purpose="batch")
        batch = await call("acreate_batch", input_file_id=upload.id, endpoint=endpoint,
                           completion_window=self.collector.completion_window, metadata={INTENT_KEY: intent})
        return batch.id, batch.status, {"input_file_id": upload.id}

    async def find(self, intent: dict, exclude: set) -> tuple[str, str] | None:
        """The batch tagged with ``intent`` (its metadata), from the provider's list, newest first;
        the search stops at batches older than the intent."""
        call, after = self._call, None
        oldest = float(intent.get("created") or 0) - CLOCK_SKEW
        while True:
            page = await call("alist_batches", limit=100, **({"after": after} if after else {}))
            data = list(_read(page, "data") or [])
            for batch in data:
                if (_read(batch, "metadata") or {}).get(INTENT_KEY) == intent["intent"]:
                    return _read(batch, "id"), _read(batch, "status")
            if not data or not _read(page, "has_more") or float(_read(data[-1], "created_at") or 0) < oldest:
                return None
            after = _read(data[-1], "id")

    async def finish(self, batch_id: str, intent: str | None = None) -> tuple[str, dict[str, dict], dict[str, Any], bool]:
        """The batch's final status, its answered lines (custom id -> response body), why others
        failed (a text, or the status and error body the provider answered the line with), and
        whether it is ours (always: OpenAI's metadata named it exactly)."""
        call = self._call
        while True:
            batch = await call("aretrieve_batch", batch_id=batch_id)
            _note(batch_id, batch.status)
            if batch.status in TERMINAL:
                break
            await asyncio.sleep(self.collector.poll_seconds)
        answered: dict[str, dict] = {}
        reasons: dict[str, Any] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await call("afile_content", file_id=file_id)
            for raw in content.content.decode("utf-8").splitlines():
                if not raw.strip():
                    continue
                line = json.loads(raw)
                response = line.get("response") or {}
                if response.get("status_code") == 200:
                    answered[line["custom_id"]] = response.get("body") or {}
                elif response.get("status_code"):  # the provider's answer to this line: its error says why
                    reasons[line["custom_id"]] = (int(response["status_code"]), json.dumps(response.get("body") or {}))
                else:
                    reasons[line["custom_id"]] = json.dumps(line.get("error") or response.get("body") or {})[:200]
        return batch.status, answered, reasons, True


def _read(obj: Any, name: str) -> Any:
    """A field of litellm's objects or of plain JSON."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


_ANTHROPIC_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def openai_answer(message: dict) -> dict:
    """An Anthropic message as the chat.completion fields the client reads (its texts, tool calls,
    finish reason and usage), as the lean path reads plain JSON rather than litellm's objects."""
    blocks = message.get("content") or ()
    text = "".join(block.get("text", "") for block in blocks if block.get("type") == "text")
    if not text:  # structured output through litellm's forced tool (models without output_format)
        text = next((json.dumps(block.get("input")) for block in blocks
                     if block.get("type") == "tool_use" and block.get("name") == "json_tool_call"), "")
    # tool calls (tools given): each other tool_use block is a call, its input an object sent as JSON text
    calls = [{"id": block.get("id"), "type": "function",
              "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input"))}}
             for block in blocks if block.get("type") == "tool_use" and block.get("name") != "json_tool_call"]
    usage = message.get("usage") or {}
    return {"id": message.get("id"), "object": "chat.completion", "model": message.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                                 **({"tool_calls": calls} if calls else {})},
                         "finish_reason": _ANTHROPIC_FINISH.get(str(message.get("stop_reason")), "stop")}],
            "usage": {"prompt_tokens": int(usage.get("input_tokens") or 0),
                      "completion_tokens": int(usage.get("output_tokens") or 0)}}


class AnthropicWire:
    """Anthropic's Message Batches API over httpx (litellm cannot create one: see the module's docstring)."""

    VERSION = "2023-06-01"
    STRUCTURED_BETA = "structured-outputs-2025-11-13"  # the header litellm sends online with output_format

    def __init__(self, client: Any, poll_seconds: float, replica: str | None = None) -> None:
        endpoint = client._endpoint_kwargs("anthropic")
        base = (replica or endpoint.get("api_base") or os.environ.get("ANTHROPIC_API_BASE") or "https://api.anthropic.com")
        self.base = (providers.api_base_for("anthropic", base) or base).rstrip("/")
        self.key = endpoint.get("api_key") or os.environ.get("ANTHROPIC_API_KEY")
        self.timeout = float(endpoint.get("timeout") or 120)
        self.poll_seconds = poll_seconds
        self.secrets = tuple(k for k in (self.key,) if k)

    async def _http(self, method: str, url: str, beta: str | None = None, **kwargs: Any) -> Any:
        import httpx

        headers = {"anthropic-version": self.VERSION, "content-type": "application/json"}
        if beta:
            headers["anthropic-beta"] = beta
        if self.key:
            headers["x-api-key"] = self.key
        try:
            async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as http:
                response = await http.request(method, url, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            unreachable = errors.RequestTimeoutError if isinstance(exc, httpx.TimeoutException) \
                else errors.EndpointConnectionError
            raise unreachable(f"anthropic batch API: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            message = redact(message, self.secrets, shapes=True, limit=MESSAGE_LIMIT)  # redacted, then cut
            cls = errors.AuthenticationError if response.status_code in (401, 403) else \
                errors.RateLimitError if response.status_code == 429 else \
                errors.BadRequestError if response.status_code < 500 else errors.ServerError
            raise cls(f"anthropic batch API: {method} {url.removeprefix(self.base)}: {response.status_code} {message}")
        return response

    async def create(self, group: list[tuple[str, dict]], endpoint: str, intent: str) -> tuple[str, str, dict]:
        # a Message Batch takes no metadata: each custom_id carries the intent (64 characters at most)
        requests = [{"custom_id": f"{intent}_{cid}", "params": entry["body"]} for cid, entry in group]
        # structured output (a schema as output_format) is a beta: its header goes on the batch's request
        beta = self.STRUCTURED_BETA if any("output_format" in r["params"] for r in requests) else None
        batch = (await self._http("POST", f"{self.base}/v1/messages/batches", beta=beta,
                                  json={"requests": requests})).json()
        return batch["id"], batch["processing_status"], {}

    async def find(self, intent: dict, exclude: set) -> tuple[str, str] | None:
        """A listed batch that may be the intent's: created around the intent's time (the provider's
        clock, give or take :data:`CLOCK_SKEW`, and the create call's timeout) with as many
        requests, not recorded already. Its results, once it ends, say whether it is (``finish``)."""
        created = float(intent.get("created") or 0)
        oldest, newest = created - CLOCK_SKEW, created + CLOCK_SKEW + self.timeout
        size = len(intent.get("custom_ids") or ())
        after = None
        while True:
            url = f"{self.base}/v1/messages/batches?limit=100" + (f"&after_id={after}" if after else "")
            page = (await self._http("GET", url)).json()
            data = page.get("data") or []
            for batch in data:
                when = _epoch(batch.get("created_at"))
                if when is None or batch.get("id") in exclude or when > newest:
                    continue
                if when < oldest:
                    return None
                if sum((batch.get("request_counts") or {}).values()) == size:
                    return batch["id"], batch.get("processing_status", "in_progress")
            if not data or not page.get("has_more"):
                return None
            after = data[-1].get("id")

    async def finish(self, batch_id: str, intent: str | None = None) -> tuple[str, dict[str, dict], dict[str, Any], bool]:
        """The batch's answered lines and why others failed (as OpenAIWire's), keyed by our request ids; and whether
        it is ours: with an ``intent``, only lines whose custom_id carries it count."""
        while True:
            batch = (await self._http("GET", f"{self.base}/v1/messages/batches/{batch_id}")).json()
            _note(batch_id, batch["processing_status"])
            if batch["processing_status"] == "ended":
                break
            await asyncio.sleep(self.poll_seconds)
        answered: dict[str, dict] = {}
        reasons: dict[str, Any] = {}
        lines = 0
        if batch.get("results_url"):
            text = (await self._http("GET", batch["results_url"])).text
            for raw in text.splitlines():
                if not raw.strip():
                    continue
                line = json.loads(raw)
                lines += 1
                tag, _, cid = line["custom_id"].rpartition("_")  # "<intent>_<request id>", or a bare request id
                if (tag or None) != intent:
                    continue
                result = line.get("result") or {}
                if result.get("type") == "succeeded":
                    answered[cid] = openai_answer(result.get("message") or {})
                elif result.get("type") == "errored":  # {"error": {"type": "error", "error": {type, message}}}
                    error: dict = result.get("error") or {}
                    error = error["error"] if isinstance(error.get("error"), dict) else error
                    status = _ANTHROPIC_STATUS.get(str(error.get("type")), 500)
                    reasons[cid] = (status, json.dumps({"type": "error", "error": error}))
                else:  # expired or canceled: sent again
                    reasons[cid] = json.dumps(result)[:200]
        return "completed", answered, reasons, not lines or bool(answered or reasons)


def _epoch(iso: Any) -> float | None:
    """An RFC 3339 time (Anthropic's ``created_at``) as seconds since the epoch."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(iso)).timestamp()  # "Z" included (Python 3.11)
    except ValueError:
        return None


def _split(lines: list[tuple[str, dict]]) -> list[list[tuple[str, dict]]]:
    """Groups of lines within the provider's limits (lines and bytes), one endpoint per group."""
    groups: list[list[tuple[str, dict]]] = []
    by_endpoint: dict[str, list[tuple[str, dict]]] = {}
    for cid, entry in lines:
        by_endpoint.setdefault(entry["endpoint"], []).append((cid, entry))
    for items in by_endpoint.values():
        group: list[tuple[str, dict]] = []
        size = 0
        for cid, entry in items:
            line_size = len(json.dumps(entry["body"])) + 128
            most, most_bytes = (ANTHROPIC_MAX_LINES, ANTHROPIC_MAX_BYTES) if entry["endpoint"] == ANTHROPIC_ENDPOINT \
                else (MAX_LINES, MAX_BYTES)
            if group and (len(group) >= most or size + line_size > most_bytes):
                groups.append(group)
                group, size = [], 0
            group.append((cid, entry))
            size += line_size
        if group:
            groups.append(group)
    return groups
