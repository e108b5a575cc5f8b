"""Anthropic's Messages API on the stub server (Message Batches, and online ``POST /v1/messages``), wire format included.

``POST /v1/messages/batches`` takes ``{"requests": [{"custom_id", "params"}]}`` (``params`` a
Messages API body); ``GET /v1/messages/batches/{id}`` reports ``processing_status``
(``in_progress``, then ``ended`` after ``--batch-seconds``) and, once ended, a ``results_url``;
that URL serves JSONL lines ``{"custom_id", "result": {"type": "succeeded", "message": {...}}}``
(or ``errored`` / ``expired``). Each line is answered by the stub's live chat logic (faults,
fixed usage and all), translated to and from Anthropic's message shape, so a test sees exactly
what a run paid for. Requests need the ``x-api-key`` (when the stub has ``--api-key``) and
``anthropic-version`` headers, as Anthropic's API does. ``GET /v1/messages/batches`` lists the
batches, most recent first (``limit``, ``after_id``, ``before_id``): a batch carries no metadata, so
a client finds its own by time and size, and by the ``custom_id`` values in its results.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_PARAMS = frozenset({"model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k", "stop_sequences",
                     "metadata", "tools", "tool_choice", "output_format", "thinking", "service_tier", "stream",
                     "container", "mcp_servers"})  # what the Messages API takes; anything else is refused


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def _params_problem(params: dict, where: str) -> str | None:
    """What Anthropic's Messages API says of a body missing a required key or carrying an unknown
    one (``where``: ``params.`` inside a batch request), or None: one check for both endpoints."""
    missing = [k for k in ("model", "max_tokens", "messages") if k not in params]
    if missing:
        return f"{where}{missing[0]}: Field required"
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        return f"{where}{unknown[0]}: Extra inputs are not permitted"
    return None


def _error(status: int, etype: str, message: str):
    return web.json_response({"type": "error", "error": {"type": etype, "message": message}}, status=status)


def _openai_body(params: dict) -> dict:
    """The chat body the stub's live logic answers, from a Messages API body."""
    system = params.get("system")
    if isinstance(system, list):
        system = "".join(part.get("text", "") for part in system if isinstance(part, dict))
    messages = ([{"role": "system", "content": system}] if system else []) + list(params.get("messages") or [])
    body = {"model": params.get("model"), "messages": messages, "max_tokens": params.get("max_tokens")}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                         ("stop", "stop_sequences")):
        if params.get(theirs) is not None:
            body[ours] = params[theirs]
    output_format = params.get("output_format") or {}
    if output_format.get("type") == "json_schema":  # answered valid under the schema, as a text block
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": output_format["schema"]}}
    return {**body, **_openai_tools(params)}


def _message(openai: dict, model: str) -> dict:
    """An Anthropic message from the live logic's chat.completion."""
    choice = (openai.get("choices") or [{}])[0]
    usage = openai.get("usage") or {}
    message = choice.get("message") or {}
    blocks = _tool_use_blocks(message) or [{"type": "text", "text": message.get("content") or ""}]
    return {"id": "msg_" + str(openai.get("id", "stub")), "type": "message", "role": "assistant", "model": model,
            "content": blocks, "stop_reason": _STOP.get(choice.get("finish_reason"), "end_turn"), "stop_sequence": None,
            "usage": {"input_tokens": usage.get("prompt_tokens", 0), "output_tokens": usage.get("completion_tokens", 0)}}


class AnthropicBatches:
    """The routes; ``app`` is the stub's state (its live logic, counters and fault schedule)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/messages/batches", self.create)
        router.add_get("/v1/messages/batches", self.list)
        router.add_get("/v1/messages/batches/{bid}", self.retrieve)
        router.add_get("/v1/messages/batches/{bid}/results", self.results)

    def _refused(self, request) -> web.Response | None:
        key = self.app.a.api_key
        if key and request.headers.get("x-api-key") != key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version header is required")
        return None

    @staticmethod
    def _public(batch: dict) -> dict:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    async def create(self, request):
        app = self.app
        app.by_path["/v1/messages/batches"] += 1
        refused = self._refused(request)
        if refused is not None:
            return refused
        try:
            requests = (await request.json())["requests"]
        except (ValueError, KeyError, TypeError):
            return _error(400, "invalid_request_error", "requests: Field required")
        ids = [r.get("custom_id") for r in requests]
        for r in requests:
            params = r.get("params") or {}
            if not _CUSTOM_ID.match(str(r.get("custom_id"))):
                return _error(400, "invalid_request_error", f"custom_id {r.get('custom_id')!r}: must match {_CUSTOM_ID.pattern}")
            problem = _params_problem(params, "params.")
            if problem:
                return _error(400, "invalid_request_error", problem)
            if "output_format" in params and "structured-outputs" not in request.headers.get("anthropic-beta", ""):
                return _error(400, "invalid_request_error", "output_format: needs the structured-outputs beta header")
        if len(set(ids)) != len(ids):
            return _error(400, "invalid_request_error", "custom_id values must be unique within a batch")
        bid = f"msgbatch_stub{len(app.message_batches) + 1}"
        now = time.time()
        app.message_batches[bid] = {
            "id": bid, "type": "message_batch", "processing_status": "in_progress",
            "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
            "ended_at": None, "created_at": _iso(now), "expires_at": _iso(now + 86400), "archived_at": None,
            "cancel_initiated_at": None, "results_url": None,
            "_requests": requests, "_started": time.monotonic(), "_results": None}
        app.message_batch_params.extend(r["params"] for r in requests)
        if app.a.batch_create_delay:  # created, but its creator hears of it only later (or never)
            await asyncio.sleep(app.a.batch_create_delay)
        return web.json_response(self._public(app.message_batches[bid]))

    async def list(self, request):
        """``GET /v1/messages/batches?limit=&after_id=&before_id=``: most recent first, as Anthropic lists them."""
        app = self.app
        refused = self._refused(request)
        if refused is not None:
            return refused
        app.by_path["/v1/messages/batches/list"] += 1
        try:
            limit = int(request.query.get("limit", 20))
        except ValueError:
            return _error(400, "invalid_request_error", "limit: Input should be a valid integer")
        if not 1 <= limit <= 1000:
            return _error(400, "invalid_request_error", "limit: Input should be between 1 and 1000")
        origin = request.url.origin()
        for batch in app.message_batches.values():
            await self._advance(batch, f"{origin}/v1/messages/batches/{batch['id']}/results")
        newest = list(reversed(app.message_batches.values()))
        ids = [b["id"] for b in newest]
        after, before = request.query.get("after_id"), request.query.get("before_id")
        if after in ids:
            newest = newest[ids.index(after) + 1:]
        elif before in ids:
            newest = newest[:ids.index(before)][-limit:]
        page = [self._public(b) for b in newest[:limit]]
        return web.json_response({"data": page, "has_more": len(newest) > limit,
                                  "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None})

    async def retrieve(self, request):
        app = self.app
        refused = self._refused(request)
        if refused is not None:
            return refused
        batch = app.message_batches.get(request.match_info["bid"])
        if batch is None:
            return _error(404, "not_found_error", "batch not found")
        app.by_path["/v1/messages/batches/retrieve"] += 1
        await self._advance(batch, f"{request.url.origin()}/v1/messages/batches/{batch['id']}/results")
        return web.json_response(self._public(batch))

    async def results(self, request):
        refused = self._refused(request)
        if refused is not None:
            return refused
        batch = self.app.message_batches.get(request.match_info["bid"])
        if batch is None or batch["_results"] is None:
            return _error(404, "not_found_error", "no results (the batch has not ended)")
        self.app.by_path["/v1/messages/batches/results"] += 1
        body = "".join(json.dumps(line) + "\n" for line in batch["_results"])
        return web.Response(text=body, content_type="application/binary")

    async def _advance(self, batch: dict, results_url: str) -> None:
        if batch["processing_status"] == "ended":
            return
        if (time.monotonic() - batch["_started"]) < self.app.a.batch_seconds:
            return
        if self.app.a.batch_expire:  # past its 24 hours: every request that had not run expires
            lines = [{"custom_id": r["custom_id"], "result": {"type": "expired"}} for r in batch["_requests"]]
        else:
            lines = await asyncio.gather(*(self._answer(r) for r in batch["_requests"]))
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for line in lines:
            counts[line["result"]["type"]] += 1
        batch.update(processing_status="ended", ended_at=_iso(time.time()), request_counts=counts,
                     results_url=results_url, _results=lines)

    async def _answer(self, item: dict) -> dict:
        from recipe.testing.line_request import LineRequest

        app = self.app
        app.requests += 1
        app.by_path["batch:/v1/messages"] += 1
        params = item.get("params") or {}
        auth = f"Bearer {app.a.api_key}" if app.a.api_key else None  # checked when the batch was created
        resp = await app._respond(LineRequest(_openai_body(params)), True, auth, app.schedule.next())
        status = 0 if resp is None else resp.status
        app.status[str(status or "drop")] += 1
        try:
            openai = json.loads(resp.text) if resp is not None else {}
        except ValueError:
            openai, status = {}, 502
        if status != 200 or not openai.get("choices"):
            return {"custom_id": item["custom_id"], "result": {"type": "errored", "error": {
                "type": "error", "error": {"type": "api_error", "message": f"stub fault (status {status})"}}}}
        return {"custom_id": item["custom_id"],
                "result": {"type": "succeeded", "message": _message(openai, str(params.get("model")))}}


# ---- tools in Anthropic's form (issue 24 §2) ------------------------------------------------------
# ``tools`` come as ``[{name, description, input_schema}]`` and ``tool_choice`` as ``{type: auto | any |
# tool (+ name) | none}``; the live logic answers them as OpenAI tools, and its calls go back as
# ``tool_use`` content blocks (``input`` an object) with ``stop_reason: tool_use``.

def _openai_tools(params: dict) -> dict:
    """The OpenAI ``tools`` / ``tool_choice`` the live logic reads, from a Messages body's own."""
    tools = [{"type": "function", "function": {"name": t.get("name"), "description": t.get("description", ""),
                                               "parameters": t.get("input_schema") or {}}}
             for t in params.get("tools") or () if isinstance(t, dict) and t.get("name")]
    if not tools:
        return {}
    choice = params.get("tool_choice") or {}
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "tool":
        return {"tools": tools, "tool_choice": {"type": "function", "function": {"name": choice.get("name")}}}
    return {"tools": tools, **({"tool_choice": "required"} if kind == "any" else {})}


def _tool_use_blocks(message: dict) -> list[dict]:
    """The live answer's ``tool_calls`` as Anthropic's ``tool_use`` blocks (none without calls)."""
    return [{"type": "tool_use", "id": "toolu_" + str(c.get("id", "")), "name": c["function"]["name"],
             "input": json.loads(c["function"]["arguments"])} for c in message.get("tool_calls") or ()]


# ---- online Messages API: POST /v1/messages (issue 24 §2) -----------------------------------------
# One Messages body answered at once by the stub's live logic (faults, usage, tools and all), as
# litellm's ``anthropic/`` route sends it: ``x-api-key`` and ``anthropic-version`` headers, the reply an
# Anthropic message or ``{"type": "error", ...}``. Each body is logged in ``/_stats`` ``anthropic_messages``.

class AnthropicMessages:
    """The route; ``app`` is the stub's state (its live logic, counters and fault schedule)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/messages", self.create)

    async def create(self, request):
        from recipe.testing.line_request import LineRequest

        app = self.app
        app.requests += 1
        app.by_path["/v1/messages"] += 1
        refused = AnthropicBatches(app)._refused(request)
        if refused is not None:
            return refused
        try:
            params = await request.json()
        except ValueError:
            return _error(400, "invalid_request_error", "the body is not JSON")
        app.anthropic_messages.append(params)
        problem = _params_problem(params, "")
        if problem:
            return _error(400, "invalid_request_error", problem)
        if params.get("stream"):
            return _error(400, "invalid_request_error", "stream: not served by this stub")
        auth = f"Bearer {app.a.api_key}" if app.a.api_key else None  # checked above, as x-api-key
        resp = await app._respond(LineRequest(_openai_body(params)), True, auth, app.schedule.next())
        if resp is None:
            return _error(500, "api_error", "stub fault (dropped)")
        app.status[str(resp.status)] += 1
        try:
            openai = json.loads(resp.text)
        except ValueError:
            return _error(500, "api_error", "stub fault (malformed)")
        if resp.status != 200 or not openai.get("choices"):
            return _error(resp.status if resp.status >= 400 else 500, "api_error", f"stub fault (status {resp.status})")
        return web.json_response(_message(openai, str(params.get("model"))))
