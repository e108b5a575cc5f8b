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
Lines that failed, or whose batch failed or expired, are submitted again in a new batch (up to
``num_retries`` times); answered lines are never sent again and go into the request cache like
any other answer. Batch states are counted per process for the progress bar.

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
from collections import Counter
from pathlib import Path
from typing import Any

from recipe import errors
from recipe.redaction import redact
from recipe.clients.error_mapping import MESSAGE_LIMIT

MAX_LINES = 50_000  # OpenAI's limits per batch: lines and input file bytes
MAX_BYTES = 190 * 1024 * 1024
ANTHROPIC_MAX_LINES = 100_000  # Anthropic's limits per Message Batch: requests and bytes
ANTHROPIC_MAX_BYTES = 256 * 1000 * 1000
ANTHROPIC_ENDPOINT = "/v1/messages"
TERMINAL = ("completed", "failed", "expired", "cancelled")
_WIRE_ONLY = ("api_base", "api_key", "timeout", "max_retries", "allowed_openai_params", "extra_body", "stream")

_states_lock = threading.Lock()
_states: dict[str, str] = {}  # batch id -> last status seen in this process
_submitted = Counter()  # "batches", "lines", "resubmitted_lines", "polled_batches" in this process


def states() -> dict:
    """Batch counts by state, and what this process submitted (summed over workers by the runner)."""
    with _states_lock:
        return {"states": dict(Counter(_states.values())), **dict(_submitted)}


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
    """The run folder's ``batches/``: one JSON per created batch, written as soon as it exists."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory)

    def save(self, record: dict) -> None:
        from recipe.storage.run_folder import atomic_write_json

        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / f"{record['id']}.json", record)

    def all(self) -> list[dict]:
        found = []
        for path in sorted(self.path.glob("*.json")):
            try:
                found.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return found

    def index(self) -> dict[str, str]:
        """custom id -> the newest recorded batch holding it that did not fail or expire."""
        found: dict[str, tuple[float, str]] = {}
        for record in self.all():
            if record.get("status") in ("failed", "expired", "cancelled"):
                continue
            for cid in record.get("custom_ids") or ():
                if cid not in found or found[cid][0] < record.get("created", 0):
                    found[cid] = (record.get("created", 0), record["id"])
        return {cid: bid for cid, (_, bid) in found.items()}


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
        self._anthropic: AnthropicWire | None = None
        self._anthropic_routes: dict[str, Any] = {}  # model -> lean_http.LeanRoute, which builds the params

    async def request(self, route: str, model: str, payload: dict, text: bool) -> Any:
        """The provider's response body (a chat.completion or text_completion dict) for one request."""
        if route == "anthropic":  # the Messages API body, built by litellm's provider configuration
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

    def _wire(self, endpoint: str):
        """Who speaks to the provider's batch API for lines of ``endpoint``."""
        if endpoint == ANTHROPIC_ENDPOINT:
            if self._anthropic is None:
                self._anthropic = AnthropicWire(self.client, self.poll_seconds)
            return self._anthropic
        return OpenAIWire(self)

    def _flush(self) -> None:
        pending, self._pending, self._timer = self._pending, {}, None
        if pending:
            task = asyncio.get_running_loop().create_task(self._run(pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # ---- one flush: find or create batches, poll them, resolve, resubmit failed lines ---------

    async def _run(self, pending: dict[str, dict]) -> None:
        try:
            attempt = 0
            while pending:
                known = self.records.index() if attempt == 0 else {}
                batches: dict[str, list[str]] = {}
                fresh = [cid for cid in pending if cid not in known]
                for cid in pending:
                    if cid in known:
                        batches.setdefault(known[cid], []).append(cid)
                if batches:
                    _count("polled_batches", len(batches))
                for group in _split([(cid, pending[cid]) for cid in fresh]):
                    batch_id = await self._create(group, resubmitted=attempt > 0)
                    batches[batch_id] = [cid for cid, _ in group]
                results = await asyncio.gather(*(self._wait(bid, cids, pending) for bid, cids in batches.items()))
                failed: dict[str, dict] = {}
                last_error: dict[str, str] = {}
                for unanswered in results:
                    for cid, why in unanswered.items():
                        failed[cid] = pending[cid]
                        last_error[cid] = why
                pending = failed
                attempt += 1
                if pending and attempt > self.client.num_retries:
                    for cid, entry in pending.items():
                        self._fail(entry, errors.ServerError(f"batch line {cid} failed {attempt} times: {last_error[cid]}"))
                    return
        except BaseException as exc:  # never leave a record waiting forever
            error = exc if isinstance(exc, errors.RecipeError) else errors.ServerError(
                f"batch API: {type(exc).__name__}: {exc}")
            for entry in pending.values():
                self._fail(entry, error)
            if not isinstance(exc, Exception):
                raise

    @staticmethod
    def _fail(entry: dict, error: BaseException) -> None:
        for future in entry["futures"]:
            if not future.done():
                future.set_exception(error)

    async def _call(self, name: str, **kwargs) -> Any:
        from recipe.clients.litellm_setup import get_litellm

        endpoint = self.client._endpoint_kwargs(self.client.provider)
        connection = {k: endpoint[k] for k in ("api_base", "api_key", "timeout") if endpoint.get(k) is not None}
        try:
            return await getattr(get_litellm(), name)(custom_llm_provider="openai", **connection, **kwargs)
        except Exception as exc:
            from recipe.clients.error_mapping import translate

            raise translate(exc, provider=self.client.provider, secrets=(self.client._api_key,)) from None

    async def _create(self, group: list[tuple[str, dict]], resubmitted: bool) -> str:
        endpoint = group[0][1]["endpoint"]
        batch_id, status, extra = await self._wire(endpoint).create(group, endpoint)
        self.records.save({"id": batch_id, **extra, "status": status, "created": time.time(),
                           "endpoint": endpoint, "custom_ids": [cid for cid, _ in group]})
        _note(batch_id, status)
        _count("batches")
        _count("lines", len(group))
        self.client.stats.count("requests", len(group))
        if resubmitted:
            _count("resubmitted_lines", len(group))
        return batch_id

    async def _wait(self, batch_id: str, cids: list[str], pending: dict[str, dict]) -> dict[str, str]:
        """Poll until the batch ends; resolve its answered lines; return the others with why."""
        status, answered, reasons = await self._wire(pending[cids[0]]["endpoint"]).finish(batch_id)
        self._update_record(batch_id, status)
        unanswered: dict[str, str] = {}
        for cid in cids:
            entry = pending[cid]
            if cid in answered:
                for future in entry["futures"]:
                    if not future.done():
                        future.set_result(answered[cid])
            else:
                unanswered[cid] = reasons.get(cid, f"batch {batch_id} {status}")
        return unanswered

    def _update_record(self, batch_id: str, status: str) -> None:
        path = self.records.path / f"{batch_id}.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if record.get("status") != status:
            self.records.save({**record, "status": status})


class OpenAIWire:
    """OpenAI's (and OpenAI-compatible) Files and Batches API, through litellm's functions."""

    def __init__(self, collector: BatchCollector) -> None:
        self.collector = collector

    async def create(self, group: list[tuple[str, dict]], endpoint: str) -> tuple[str, str, dict]:
        call = self.collector._call
        data = "".join(json.dumps({"custom_id": cid, "method": "POST", "url": endpoint, "body": entry["body"]}) + "\n"
                       for cid, entry in group).encode()
        upload = await call("acreate_file", file=("batch.jsonl", data), purpose="batch")
        batch = await call("acreate_batch", input_file_id=upload.id, endpoint=endpoint,
                           completion_window=self.collector.completion_window)
        return batch.id, batch.status, {"input_file_id": upload.id}

    async def finish(self, batch_id: str) -> tuple[str, dict[str, dict], dict[str, str]]:
        """The batch's final status, its answered lines (custom id -> response body) and why others failed."""
        call = self.collector._call
        while True:
            batch = await call("aretrieve_batch", batch_id=batch_id)
            _note(batch_id, batch.status)
            if batch.status in TERMINAL:
                break
            await asyncio.sleep(self.collector.poll_seconds)
        answered: dict[str, dict] = {}
        reasons: dict[str, str] = {}
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
                else:
                    reasons[line["custom_id"]] = json.dumps(line.get("error") or response.get("body") or {})[:200]
        return batch.status, answered, reasons


_ANTHROPIC_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def openai_answer(message: dict) -> dict:
    """An Anthropic message as the chat.completion fields the client reads (its texts, finish
    reason and usage), as the lean path reads plain JSON rather than litellm's objects."""
    blocks = message.get("content") or ()
    text = "".join(block.get("text", "") for block in blocks if block.get("type") == "text")
    if not text:  # structured output through litellm's forced tool (models without output_format)
        text = next((json.dumps(block.get("input")) for block in blocks
                     if block.get("type") == "tool_use" and block.get("name") == "json_tool_call"), "")
    usage = message.get("usage") or {}
    return {"id": message.get("id"), "object": "chat.completion", "model": message.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": _ANTHROPIC_FINISH.get(message.get("stop_reason"), "stop")}],
            "usage": {"prompt_tokens": int(usage.get("input_tokens") or 0),
                      "completion_tokens": int(usage.get("output_tokens") or 0)}}


class AnthropicWire:
    """Anthropic's Message Batches API over httpx (litellm cannot create one: see the module's docstring)."""

    VERSION = "2023-06-01"
    STRUCTURED_BETA = "structured-outputs-2025-11-13"  # the header litellm sends online with output_format

    def __init__(self, client: Any, poll_seconds: float) -> None:
        endpoint = client._endpoint_kwargs("anthropic")
        base = (endpoint.get("api_base") or os.environ.get("ANTHROPIC_API_BASE") or "https://api.anthropic.com")
        self.base = base.rstrip("/").removesuffix("/v1")
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
            raise errors.ConnectionError(f"anthropic batch API: {type(exc).__name__}: {exc}") from None
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

    async def create(self, group: list[tuple[str, dict]], endpoint: str) -> tuple[str, str, dict]:
        requests = [{"custom_id": cid, "params": entry["body"]} for cid, entry in group]
        # structured output (a schema as output_format) is a beta: its header goes on the batch's request
        beta = self.STRUCTURED_BETA if any("output_format" in r["params"] for r in requests) else None
        batch = (await self._http("POST", f"{self.base}/v1/messages/batches", beta=beta,
                                  json={"requests": requests})).json()
        return batch["id"], batch["processing_status"], {}

    async def finish(self, batch_id: str) -> tuple[str, dict[str, dict], dict[str, str]]:
        while True:
            batch = (await self._http("GET", f"{self.base}/v1/messages/batches/{batch_id}")).json()
            _note(batch_id, batch["processing_status"])
            if batch["processing_status"] == "ended":
                break
            await asyncio.sleep(self.poll_seconds)
        answered: dict[str, dict] = {}
        reasons: dict[str, str] = {}
        if batch.get("results_url"):
            text = (await self._http("GET", batch["results_url"])).text
            for raw in text.splitlines():
                if not raw.strip():
                    continue
                line = json.loads(raw)
                result = line.get("result") or {}
                if result.get("type") == "succeeded":
                    answered[line["custom_id"]] = openai_answer(result.get("message") or {})
                else:
                    reasons[line["custom_id"]] = json.dumps(result)[:200]
        return "completed", answered, reasons


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
