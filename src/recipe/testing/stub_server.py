"""A small, real OpenAI-compatible HTTP server used as a stand-in for remote endpoints.

Tests and benchmarks need something that speaks the exact OpenAI wire format (as NVIDIA NIM,
OpenAI and vLLM do) but is instant, deterministic and can misbehave on demand: latency with
jitter, faults in exact proportions, throttling, reward-model answers. It binds to 127.0.0.1 only.
Per record, a prompt containing ``<<empty>>`` gets a reply with no choice at all (an empty
stream when streamed), and one containing ``<<object>>`` a reply whose content is a JSON object.
Answers to a JSON Schema pick enum values and numbers by ``--pick`` (``length``: by the prompt's
length; ``first``: the first enum value and the minimum; ``last``: the last and the maximum); a
conversation containing ``<<first>>`` or ``<<last>>`` picks so whatever the server's setting, so a
test can decide each record's verdict or score. Strings carry the prompt's first ``--echo-chars``
characters.

Run ``python -m recipe.testing.stub_server --help``; it prints ``READY <port>`` once serving.
``StubServer`` runs it as a subprocess so the server never shares the client's GIL.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import random
import select
import signal
import subprocess
import sys
import time
import urllib.request
from fractions import Fraction
from typing import Any

from aiohttp import web

from recipe.testing import queueing
from recipe.testing.line_request import LineRequest
from recipe.clients.subprocess_server import ServerProcess

HOST = "127.0.0.1"
_JSON = "application/json"
_FAULTS = ("500", "429", "drop", "malformed")
_ORDINALS = ("one", "two", "three", "four", "five")


def _tokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))


def _text(content: Any) -> str:
    """Message content may be a string or a list of parts (multimodal); keep the text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _schema_in(body: dict) -> dict | None:
    """The JSON Schema a request carries, in whichever backend's form it came (None: none)."""
    rf = body.get("response_format")
    if isinstance(rf, dict):
        if isinstance(rf.get("json_schema"), dict):
            return rf["json_schema"].get("schema")
        if isinstance(rf.get("schema"), dict):
            return rf["schema"]
    for holder in (body, body.get("nvext") or {}):
        if isinstance(holder.get("guided_json"), dict):
            return holder["guided_json"]
    return body.get("format") if isinstance(body.get("format"), dict) else None


def _instance(schema: dict, root: dict, text: str, label: str = "value", pick: str = "length",
              chars: int = 30) -> Any:
    """A deterministic value valid under ``schema`` (the subset of JSON Schema tests use):
    strings carry ``label`` and the prompt's first ``chars`` characters; enum values and numbers
    follow ``pick`` (by the prompt's length, or the first/minimum, or the last/maximum)."""
    def again(node: dict, name: str = label) -> Any:
        return _instance(node, root, text, name, pick, chars)

    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        return again(node)
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return again(options[0])
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        at = {"first": 0, "last": -1}.get(pick, len(text) % len(schema["enum"]))
        return schema["enum"][at]
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: again(v, k) for k, v in props.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), min(int(schema.get("maxItems", 3)), 3))
        return [again(schema.get("items") or {}, f"{label} {i + 1}") for i in range(count)]
    if kind in ("integer", "number"):
        low, high = schema.get("minimum", 0), schema.get("maximum", 9)
        value = {"first": low, "last": high}.get(pick, low + len(text) % (int(high - low) + 1))
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return {"first": False, "last": True}.get(pick, len(text) % 2 == 0)
    if kind == "null":
        return None
    if "pattern" in schema:  # keep to letters, digits and plain punctuation: what list patterns allow
        text = "".join(c for c in text if c.isalnum() or c in " ?.,:'")
    value = f"{label} about {text[:chars]}".strip()
    value = value.ljust(int(schema.get("minLength", 0)), ".")
    return value[:int(schema.get("maxLength", len(value)))]


def _broken(schema: dict, valid: Any, count: int) -> str:
    """An answer that breaks ``schema``: alternately cut-off JSON and JSON of the wrong shape."""
    if count % 2:
        dumped = json.dumps(valid)
        return dumped[:max(1, len(dumped) // 2)]
    return json.dumps([] if schema.get("type", "object") == "object" else {"unexpected": True})


def _error(status: int, message: str, etype: str, code: str | None, param: str | None = None,
           headers: dict[str, str] | None = None):
    body = json.dumps({"error": {"message": message, "type": etype, "param": param, "code": code}})
    return web.Response(status=status, text=body, content_type=_JSON, headers=headers)


class _Schedule:
    """Deterministic fault schedule: smooth weighted round-robin (as nginx does).

    Each outcome gets an integer weight out of a period L; over every L requests each outcome
    is picked exactly weight times and picks are spread evenly, so the proportions are exact
    and two faults never land on the same request.
    """

    def __init__(self, fractions: dict[str, float]) -> None:
        fr = {k: Fraction(v).limit_denominator(1000) for k, v in fractions.items() if v > 0}
        if sum(fr.values(), Fraction(0)) > 1:
            raise ValueError("fault fractions add up to more than 1")
        period = math.lcm(*(f.denominator for f in fr.values())) if fr else 1
        weights = {"ok": period - sum(int(f * period) for f in fr.values())}
        weights.update({k: int(f * period) for k, f in fr.items()})
        self.period, self.names = period, list(weights)
        self.weights, self.current = list(weights.values()), [0] * len(weights)

    def next(self) -> str:
        cur, best = self.current, 0
        for i, w in enumerate(self.weights):
            cur[i] += w
            if cur[i] > cur[best]:
                best = i
        cur[best] -= self.period
        return self.names[best]


class _App:
    """Holds configuration, counters and the request handlers of one server process."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.service = queueing.ServiceModel.from_args(a)  # --capacity: a queueing engine (testing/queueing.py)
        self.reset()

    @property
    def retry(self) -> dict[str, str]:
        """The Retry-After header of a 429: seconds, or (``--retry-after-date``) an HTTP date."""
        return _retry_after_header(self.a)

    def reset(self) -> None:
        a = self.a
        self.schedule = _Schedule({"500": a.fail_500, "429": a.fail_429, "drop": a.drop,
                                   "malformed": a.malformed})
        self.requests, self.in_flight, self.max_in_flight = 0, 0, 0
        self.by_path: collections.Counter[str] = collections.Counter()
        self.status: collections.Counter[str] = collections.Counter()
        self.arrivals: list[float] = []
        self.auth: dict[str, None] = {}
        self.user_agents: dict[str, None] = {}
        self.bodies: collections.deque[Any] = collections.deque(maxlen=200)
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.message_batches: dict[str, dict] = {}  # Anthropic's (testing/anthropic_batches.py)
        self.message_batch_params: list[dict] = []
        self.anthropic_messages: list[dict] = []  # online POST /v1/messages bodies (testing/anthropic_batches.py)
        self.schema_schedule = _Schedule({"break": a.schema_break})
        self.schema_log: list[list] = []  # [first user message, broken?] per answer to a schema
        # [the message answered, content] per reward or schema answer: what a test expects is read
        # from here (the wire), never recomputed from the stub's rules
        self.answers: list[list] = []
        self.quirks = _Quirks(a)  # the wire's oddities (issue 21): their own region, below
        self.thinking = _Thinking(a)  # reasoning models' answers (issue 24): their own region, below
        self.tool_calls = _ToolCalls(a)  # answers to requests with tools (issue 24 §2): their region, below

    async def stats(self, request):
        return web.json_response({
            "requests": self.requests, "by_path": dict(self.by_path),
            "batches_created": len(self.batches),
            "batch_lines": sum(b["request_counts"]["total"] for b in self.batches.values()),
            "status_counts": dict(self.status), "max_in_flight": self.max_in_flight,
            "arrivals": self.arrivals, "auth_headers": list(self.auth), "user_agents": list(self.user_agents),
            "bodies": list(self.bodies), "schema_log": self.schema_log, "answers": self.answers,
            "message_batches_created": len(self.message_batches), "message_batch_params": self.message_batch_params,
            "quirks": self.quirks.counts, "reasoning": self.thinking.log,
            "reasoning_tokens_sent": self.thinking.sent,
            "tool_calls": self.tool_calls.log, "anthropic_messages": self.anthropic_messages})

    async def set_models(self, request):
        self.a.models = (await request.text()).strip()
        return web.json_response({"ok": True})

    async def do_reset(self, request):
        self.reset()
        return web.json_response({"ok": True})

    async def models(self, request):
        return web.json_response({"object": "list", "data": [
            {"id": "stub-model", "object": "model", "created": 0, "owned_by": "stub"}]})

    async def chat(self, request):
        return await self._handle(request, True)

    async def completions(self, request):
        return await self._handle(request, False)

    async def ollama_chat(self, request):
        return await self._ollama(request, True)

    async def ollama_generate(self, request):
        return await self._ollama(request, False)

    async def _ollama(self, request, chat: bool):
        """Ollama's own API (/api/chat, /api/generate): the same replies, in Ollama's shape."""
        self.requests += 1
        self.by_path[request.path] += 1
        body = await request.json()
        self.bodies.append(body)
        if self.schedule.next() == "malformed":  # the one fault this API has here: a reply cut short
            self.status["malformed"] += 1
            return web.Response(text='{"model": "broken", "message": {"role": "assis', content_type=_JSON)
        if chat:
            texts = [_text(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict)]
            users = [_text(m.get("content")) for m in body.get("messages") or []
                     if isinstance(m, dict) and m.get("role") == "user"]
            prompt = users[-1] if users else (texts[-1] if texts else "")
        else:
            prompt = str(body.get("prompt", ""))
        _, content, _ = self._choices(chat, {**body, "n": 1}, prompt, [prompt])[0]
        reply = {"model": body.get("model", "stub-model"), "created_at": "2026-01-01T00:00:00Z", "done": True,
                 "done_reason": "stop", "prompt_eval_count": _tokens(len(prompt)), "eval_count": _tokens(len(content))}
        if chat:
            reply["message"] = self.tool_calls.ollama({"role": "assistant", "content": content}, body, prompt)
        else:
            reply["response"] = content
        self.status["200"] += 1
        return web.json_response(reply)

    async def _handle(self, request, chat: bool):
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.arrivals.append(time.time())
        self.by_path[request.path] += 1
        auth = request.headers.get("Authorization")
        if auth is not None:
            self.auth[auth] = None
        self.user_agents[request.headers.get("User-Agent", "")] = None
        fault = self.schedule.next()
        status = "200"
        try:
            resp = await self._respond(request, chat, auth, fault)
            if resp is None:  # dropped: the transport is closed, aiohttp discards this reply
                status, resp = "drop", web.Response(status=204)
            else:
                status = str(resp.status)
            return resp
        finally:
            self.in_flight -= 1
            self.status[status] += 1

    async def _respond(self, request, chat: bool, auth: str | None, fault: str):
        a = self.a
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "Invalid JSON body", "invalid_request_error", None)
        self.bodies.append(body)
        if a.api_key and auth != f"Bearer {a.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error",
                          "invalid_api_key")
        if a.models and body.get("model") not in a.models.split(","):
            return _error(404, f"The model `{body.get('model')}` does not exist or you do not have "
                          "access to it.", "invalid_request_error", "model_not_found")
        if a.status:
            return _error(a.status, f"Refused with status {a.status} (injected)", "permission_error"
                          if a.status == 403 else "invalid_request_error", None)
        if a.throttle_above and self.in_flight > a.throttle_above:
            return _error(429, "Too many requests in flight", "rate_limit_exceeded",
                          "rate_limit_exceeded", headers=self.retry)
        if fault == "429":
            return _error(429, "Rate limit reached", "rate_limit_exceeded",
                          "rate_limit_exceeded", headers=self.retry)
        quirk = self.quirks.instead_of_answer()
        if quirk is not None:
            return quirk
        await self.service.serve()
        if a.latency > 0:
            s = a.jitter_sigma
            await asyncio.sleep(a.latency * (random.lognormvariate(-s * s / 2, s) if s else 1.0))
        if fault == "500":
            return _error(500, "Internal server error (injected)", "server_error", None)
        if fault == "drop":
            if request.transport is not None:
                request.transport.close()
            return None
        if fault == "malformed":
            return web.Response(text='{"id": "broken", "choices": [{"index": 0, "mess',
                                content_type=_JSON)
        if chat:
            messages = body.get("messages") or []
            texts = [_text(m.get("content")) for m in messages if isinstance(m, dict)]
            prompt_chars = sum(map(len, texts))
            users = [_text(m.get("content")) for m in messages
                     if isinstance(m, dict) and m.get("role") == "user"]
            last = users[-1] if users else (texts[-1] if texts else "")
            prompts = [last]
        else:
            prompt = body.get("prompt", "")
            prompts = [p if isinstance(p, str) else "" for p in prompt] \
                if isinstance(prompt, list) else [str(prompt)]
            prompt_chars = sum(map(len, prompts))
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        if a.context_length and _tokens(prompt_chars) + max_tokens > a.context_length:
            total = _tokens(prompt_chars) + max_tokens
            return _error(400, f"This model's maximum context length is {a.context_length} "
                          f"tokens. However, you requested {total} tokens "
                          f"({_tokens(prompt_chars)} in the messages, {max_tokens} in the "
                          "completion). Please reduce the length of the messages or completion.",
                          "invalid_request_error", "context_length_exceeded", "messages")
        choices = self._choices(chat, body, texts[-1] if chat and texts else "", prompts)
        if any("<<empty>>" in p for p in prompts):
            choices = []
        elif any("<<object>>" in p for p in prompts):
            choices = [(i, {"answer": c}, lp) for i, c, lp in choices]
        choices = self.thinking.apply(choices, prompts)
        model = body.get("model", "stub-model")
        usage = {"prompt_tokens": _tokens(prompt_chars),
                 "completion_tokens": _tokens(sum(len(c[1] or "") for c in choices))}
        if a.usage:  # fixed usage per request, so that a priced model's cost is known exactly
            usage["prompt_tokens"], usage["completion_tokens"] = (int(x) for x in a.usage.split(","))
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        usage = self.thinking.usage(self.quirks.usage(usage))
        refused = chat and any("<<refuse>>" in p for p in prompts)
        if refused:
            self.answers.append([prompts[0], _refusal(prompts[0])])
        obj = "chat.completion" if chat else "text_completion"
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-stub{self.requests}", "object": obj,
                "created": int(time.time()), "model": model}
        if body.get("stream") and chat and body.get("tools"):  # tool-call deltas (the tool calls' region)
            return await self.tool_calls.stream(request, head, choices, usage, body, prompts[0] if prompts else "")
        if body.get("stream") and (refused or self.quirks.streams_oddly()):
            return await self.quirks.stream(request, chat, head, choices, usage, body,
                                            _refusal(prompts[0]) if refused else None)
        if body.get("stream"):
            return await self._stream(request, chat, head, choices, usage, body)
        finish = a.finish_reason
        out = [{"index": i, "message": {"role": "assistant", "content": c}, "logprobs": lp,
                "finish_reason": finish} if chat else
               {"index": i, "text": c, "logprobs": lp, "finish_reason": finish}
               for i, c, lp in choices]
        out = self.thinking.choices(self.quirks.choices(out, chat, _refusal(prompts[0]) if refused else None), chat)
        out = self.tool_calls.choices(out, body, prompts[0] if prompts else "") if chat else out
        text = json.dumps({**head, "choices": out, "usage": usage})
        if a.drip:
            return await self._drip(request, text.encode())
        return web.Response(text=text, content_type=_JSON)

    async def _drip(self, request, data: bytes):
        """A complete 200 reply sent one byte every ``--drip`` seconds: each read is quick."""
        resp = web.StreamResponse(headers={"Content-Type": _JSON})
        resp.content_length = len(data)
        await resp.prepare(request)
        for i in range(len(data)):
            await resp.write(data[i:i + 1])
            await asyncio.sleep(self.a.drip)
        await resp.write_eof()
        return resp

    def _choices(self, chat: bool, body: dict, last_msg: str, prompts: list[str]) -> list:
        """Return ``(index, content, logprobs)`` triples for the reply mode in force."""
        a = self.a
        if chat and a.reward:
            h = round((len(last_msg) % 50) / 10, 4)
            c = round((sum(map(ord, last_msg)) % 40) / 10, 4)
            scores = (("helpfulness", h), ("correctness", c), ("coherence", 3.5),
                      ("complexity", 0.5), ("verbosity", 1.0))
            content = ",".join(f"{k}:{v}" for k, v in scores)
            lp: dict | None = None if a.reward_content_only else {"content": [
                {"token": k, "logprob": v, "bytes": None, "top_logprobs": []} for k, v in scores]}
            self.answers.append([last_msg, content])
            return [(0, content, lp)]
        n = 1 if a.ignore_n else max(1, int(body.get("n") or 1))
        seed = body.get("seed")
        schema = _schema_in(body)
        out: list[tuple[int, str | None, Any]] = []
        for p in prompts:
            if schema is not None:  # an answer valid under the request's schema, or broken on schedule
                # Keyed by the first user turn: a follow-up turn asking again is the same record.
                first = next((_text(m.get("content")) for m in body.get("messages") or []
                              if isinstance(m, dict) and m.get("role") == "user"), p) if chat else p
                said = " ".join(_text(m.get("content")) for m in body.get("messages") or []
                                if isinstance(m, dict)) if chat else p
                pick = next((w for w in ("first", "last") if f"<<{w}>>" in said), a.pick)
                for _ in range(n):
                    valid = _instance(schema, schema, first, pick=pick, chars=a.echo_chars)
                    broken = self.schema_schedule.next() == "break"
                    self.schema_log.append([first, broken])
                    content = _broken(schema, valid, len(self.schema_log)) if broken else json.dumps(valid)
                    self.answers.append([first, content])
                    out.append((len(out), content, None))
                continue
            if a.reply == "list":
                x = p[:30]
                base = "\n".join(f"{i + 1}. item {w} about {x}" for i, w in enumerate(_ORDINALS))
            elif a.reply == "yes":
                base = "Yes"
            elif a.reply in ("empty", "null"):
                out.append((len(out), "" if a.reply == "empty" else None, None))
                continue
            else:
                base = "echo: " + (p if chat else p[-200:])
            if seed is not None:
                base += f" [seed={seed}]"
            for j in range(n):
                idx = len(out)
                out.append((idx, base + (f" #{j}" if j else ""), None))
        return out

    async def _stream(self, request, chat: bool, head: dict, choices: list, usage: dict,
                      body: dict):
        """Server-sent events: one chunk per piece of each choice, then ``[DONE]``."""
        thinking = self.thinking.snapshot()  # this request's traces, before any await
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

        async def send(choice_list: list, extra: dict | None = None) -> None:
            chunk = {**head, "choices": choice_list, **(extra or {})}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        for i, content, _ in choices:
            content = content or ""
            if chat:
                await send([{"index": i, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None}])
            step = max(1, math.ceil(len(content) / 8))
            pieces = [content[s:s + step] for s in range(0, len(content), step)] \
                if isinstance(content, str) else [content]
            for delta in thinking.deltas(i) if chat else ():  # the trace first, in its own field
                await send([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
            for piece in pieces:
                await send([{"index": i, "delta": {"content": piece}, "logprobs": None,
                             "finish_reason": None} if chat else
                            {"index": i, "text": piece, "logprobs": None, "finish_reason": None}])
            finish = thinking.finish(i, self.a.finish_reason)
            await send([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}
                        if chat else
                        {"index": i, "text": "", "logprobs": None, "finish_reason": finish}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], {"usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def created_then_wait(app: "_App") -> None:
    """``--batch-create-delay``: the batch exists (and is counted) before its creator hears of it."""
    if app.a.batch_create_delay:
        await asyncio.sleep(app.a.batch_create_delay)


class _Batches:
    """OpenAI's Files and Batches API (``/v1/files``, ``/v1/batches``), wire format included.

    A batch moves through validating, in_progress and finalizing over ``--batch-seconds``, then
    answers every line with the live chat/completions logic (faults, usage and all): answered
    lines go to the output file, failed ones to the error file, as OpenAI does.
    """

    def __init__(self, app: "_App") -> None:
        self.app = app

    def _file(self, content: bytes, filename: str, purpose: str) -> dict:
        app = self.app
        fid = f"file-stub{len(app.files) + 1}"
        app.files[fid] = {"object": {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                                     "filename": filename, "purpose": purpose, "status": "processed",
                                     "expires_at": None, "status_details": None},
                          "content": content}
        return app.files[fid]["object"]

    async def create_file(self, request):
        self.app.by_path["/v1/files"] += 1
        reader = await request.multipart()
        purpose, filename, content = "batch", "input.jsonl", b""
        async for part in reader:
            if part.name == "purpose":
                purpose = (await part.read()).decode()
            elif part.name == "file":
                filename = part.filename or filename
                content = bytes(await part.read())
        return web.json_response(self._file(content, filename, purpose))

    async def get_file(self, request):
        entry = self.app.files.get(request.match_info["fid"])
        if entry is None:
            return _error(404, "No such File object", "invalid_request_error", None)
        return web.json_response(entry["object"])

    async def file_content(self, request):
        entry = self.app.files.get(request.match_info["fid"])
        if entry is None:
            return _error(404, "No such File object", "invalid_request_error", None)
        self.app.by_path["/v1/files/content"] += 1
        return web.Response(body=entry["content"], content_type="application/octet-stream")

    async def create_batch(self, request):
        app = self.app
        app.by_path["/v1/batches"] += 1
        body = await request.json()
        entry = app.files.get(body.get("input_file_id", ""))
        if entry is None:
            return _error(400, "input_file_id not found", "invalid_request_error", None)
        refused = self._metadata_refused(body.get("metadata"))
        if refused is not None:
            return refused
        lines = [json.loads(line) for line in entry["content"].decode().splitlines() if line.strip()]
        bid = f"batch_stub{len(app.batches) + 1}"
        now = int(time.time())
        app.batches[bid] = {
            "id": bid, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
            "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window", "24h"),
            "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": now,
            "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None, "completed_at": None,
            "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata") or {}, "_lines": lines, "_started": time.monotonic()}
        await created_then_wait(app)
        return web.json_response(self._public(app.batches[bid]))

    @staticmethod
    def _public(batch: dict) -> dict:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    async def get_batch(self, request):
        batch = self.app.batches.get(request.match_info["bid"])
        if batch is None:
            return _error(404, "No such batch", "invalid_request_error", None)
        self.app.by_path["/v1/batches/retrieve"] += 1
        await self._advance(batch)
        return web.json_response(self._public(batch))

    async def _advance(self, batch: dict) -> None:
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return
        elapsed = (time.monotonic() - batch["_started"]) / max(1e-9, self.app.a.batch_seconds)
        now = int(time.time())
        if elapsed >= 1 / 3 and batch["in_progress_at"] is None:
            batch["status"], batch["in_progress_at"] = "in_progress", now
        if elapsed >= 2 / 3 and batch["finalizing_at"] is None:
            batch["status"], batch["finalizing_at"] = "finalizing", now
        if elapsed < 1:
            return
        if self.app.a.batch_expire:
            batch["status"], batch["expired_at"] = "expired", now
            return
        outputs, errors = await asyncio.gather(*(self._answer(line) for line in batch["_lines"])), []
        good = [o for o in outputs if o["response"] is not None and o["response"]["status_code"] == 200]
        errors = [o for o in outputs if o not in good]
        if good:
            batch["output_file_id"] = self._file("".join(json.dumps(o) + "\n" for o in good).encode(),
                                                 "batch_output.jsonl", "batch_output")["id"]
        if errors:
            batch["error_file_id"] = self._file("".join(json.dumps(o) + "\n" for o in errors).encode(),
                                                "batch_errors.jsonl", "batch_output")["id"]
        batch["request_counts"] = {"total": len(outputs), "completed": len(good), "failed": len(errors)}
        batch["status"], batch["completed_at"] = "completed", now

    # ---- listing and metadata, as OpenAI has them (a run looks its batches up after a kill) ----

    @staticmethod
    def _metadata_refused(metadata: Any):
        """OpenAI's rule: at most 16 pairs, string keys up to 64 characters, string values up to 512."""
        if metadata is None:
            return None
        if not isinstance(metadata, dict) or len(metadata) > 16 or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items()):
            return _error(400, "Invalid 'metadata': at most 16 string pairs, keys up to 64 and values up to 512 "
                          "characters", "invalid_request_error", "metadata")
        return None

    async def list_batches(self, request):
        """``GET /v1/batches?limit=&after=``: newest first, ``after`` a batch id (the cursor)."""
        app = self.app
        app.by_path["/v1/batches/list"] += 1
        try:
            limit = int(request.query.get("limit", 20))
        except ValueError:
            return _error(400, "Invalid 'limit'", "invalid_request_error", "limit")
        if not 1 <= limit <= 100:
            return _error(400, "Invalid 'limit': between 1 and 100", "invalid_request_error", "limit")
        for batch in app.batches.values():
            await self._advance(batch)
        newest = list(reversed(app.batches.values()))  # created in order: the last is the newest
        after = request.query.get("after")
        if after:
            ids = [b["id"] for b in newest]
            if after not in ids:
                return _error(404, f"No such batch: {after}", "invalid_request_error", "after")
            newest = newest[ids.index(after) + 1:]
        page = [self._public(b) for b in newest[:limit]]
        return web.json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None, "has_more": len(newest) > limit})

    async def _answer(self, line: dict) -> dict:
        app = self.app
        app.requests += 1
        app.by_path["batch:" + str(line.get("url"))] += 1
        fault = app.schedule.next()
        resp = await app._respond(LineRequest(line.get("body") or {}), line.get("url") != "/v1/completions",
                                  None, fault)
        rid = f"batch_req_{app.requests}"
        if resp is None:  # a dropped connection, in a batch: the line failed
            return {"id": rid, "custom_id": line.get("custom_id"), "response": None,
                    "error": {"code": "server_error", "message": "dropped"}}
        app.status[str(resp.status)] += 1
        try:
            body = json.loads(resp.text)
        except ValueError:
            body = {"error": {"message": "malformed"}}
        return {"id": rid, "custom_id": line.get("custom_id"),
                "response": {"status_code": resp.status, "request_id": rid, "body": body}, "error": None}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    p.add_argument("--latency", type=float, default=0.0, help="mean delay in seconds")
    p.add_argument("--jitter-sigma", type=float, default=0.0, help="lognormal sigma (mean kept)")
    for f in ("fail-500", "fail-429", "drop", "malformed"):
        p.add_argument(f"--{f}", type=float, default=0.0, help="exact fraction of requests")
    p.add_argument("--retry-after", type=float, default=0.2)
    p.add_argument("--throttle-above", type=int, default=0, help="429 above N in flight; 0=off")
    p.add_argument("--ignore-n", action="store_true", help="always one choice, as llama.cpp")
    p.add_argument("--reward", action="store_true", help="answer as nemotron-4-340b-reward")
    p.add_argument("--reward-content-only", action="store_true", help="reward with no logprobs")
    p.add_argument("--reply", choices=("echo", "list", "yes", "empty", "null"), default="echo",
                   help="empty: content \"\"; null: content null")
    p.add_argument("--pick", choices=("length", "first", "last"), default="length",
                   help="schema answers: enum value and number by the prompt's length, or the first/min, or the last/max")
    p.add_argument("--echo-chars", type=int, default=30, help="schema answers: prompt characters a string carries")
    p.add_argument("--schema-break", type=float, default=0.0,
                   help="exact fraction of answers to a schema that break it")
    p.add_argument("--finish-reason", default="stop", help="e.g. length: a truncated answer")
    p.add_argument("--status", type=int, default=0, help="answer every request with this HTTP error")
    p.add_argument("--drip", type=float, default=0.0, help="send the reply one byte per N seconds")
    p.add_argument("--api-key", default=None)
    p.add_argument("--context-length", type=int, default=0, help="0 = off")
    p.add_argument("--usage", default="", help="PROMPT,COMPLETION: report this usage on every answer")
    p.add_argument("--batch-seconds", type=float, default=1.0, help="how long a batch takes to complete")
    p.add_argument("--batch-expire", action="store_true", help="batches expire instead of completing")
    p.add_argument("--batch-create-delay", type=float, default=0.0,
                   help="create a batch, then wait this long before answering (a client killed meanwhile "
                        "never learns its id)")
    p.add_argument("--models", default="", help="comma-separated known models, others get 404; empty = any")
    _quirk_options(p)
    queueing.add_arguments(p)
    _thinking_options(p)
    return p


async def _serve(args: argparse.Namespace) -> None:
    state = _App(args)
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_get("/v1/models", state.models)
    app.router.add_post("/v1/chat/completions", state.chat)
    app.router.add_post("/v1/completions", state.completions)
    batches = _Batches(state)
    app.router.add_post("/v1/files", batches.create_file)
    app.router.add_get("/v1/files/{fid}", batches.get_file)
    app.router.add_get("/v1/files/{fid}/content", batches.file_content)
    app.router.add_post("/v1/batches", batches.create_batch)
    app.router.add_get("/v1/batches/{bid}", batches.get_batch)
    app.router.add_get("/v1/batches", batches.list_batches)
    from recipe.testing.anthropic_batches import AnthropicBatches, AnthropicMessages

    AnthropicBatches(state).routes(app.router)
    AnthropicMessages(state).routes(app.router)
    app.router.add_post("/api/chat", state.ollama_chat)
    app.router.add_post("/api/generate", state.ollama_generate)
    state.service.routes(app.router)
    app.router.add_get("/_stats", state.stats)
    app.router.add_post("/_reset", state.do_reset)
    app.router.add_post("/_models", state.set_models)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, HOST, args.port, backlog=4096)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {runner.addresses[0][1]}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: serve until SIGTERM/SIGINT."""
    asyncio.run(_serve(_parser().parse_args(argv)))


# ---- the wire's oddities (issue 21) ------------------------------------------------------------
# Each is off by default; StubServer takes them as keyword arguments (``stream_split="utf16"``).
# A prompt containing ``<<refuse>>`` is refused as OpenAI refuses: ``content: null`` with ``refusal``
# (its text is logged in ``answers``).

_QUIRKS = {  # keyword: (flag, type, default, help)
    "stream_split": ("--stream-split", str, "", ("utf16: each non-BMP character's UTF-16 halves in two chunks, "
                     "as two \\u escapes; bytes: each multi-byte character's UTF-8 bytes split over two chunks")),
    "stream_cut": ("--stream-cut", float, 0.0, "exact fraction of streamed answers cut short, no finish_reason"),
    "cut_how": ("--cut-how", str, "close", "close: the socket is closed mid-answer; eof: the body ends cleanly"),
    "stream_usage": ("--stream-usage", str, "asked", "asked: usage when stream_options.include_usage; never"),
    "fail_409": ("--fail-409", float, 0.0, "exact fraction of requests answered 409 Conflict"),
    "error_200": ("--error-200", float, 0.0, "exact fraction answered HTTP 200 with an {error: ...} body"),
    "retry_after_date": ("--retry-after-date", int, 0, "1: a 429's Retry-After as an HTTP date"),
    "content_form": ("--content-form", str, "string", "parts: message content as a list of text parts"),
    "usage_form": ("--usage-form", str, "number", "string: usage numbers as strings with a fraction (\"5.5\")"),
}
_REFUSAL = "I'm sorry, I can't help with that: "


def _quirk_options(p: argparse.ArgumentParser) -> None:
    for flag, kind, default, text in _QUIRKS.values():
        p.add_argument(flag, type=kind, default=default, help=text)


def _quirk_args(quirks: dict) -> list[str]:
    unknown = set(quirks) - set(_QUIRKS)
    if unknown:
        raise TypeError(f"StubServer got unknown options: {sorted(unknown)}")
    return [f"{_QUIRKS[k][0]}={v}" for k, v in quirks.items()]


def _refusal(prompt: str) -> str:
    return _REFUSAL + prompt[:40]


def _retry_after_header(a: argparse.Namespace) -> dict[str, str]:
    if getattr(a, "retry_after_date", 0):
        import email.utils

        # one second more than asked: an HTTP date has whole seconds, the wait must be at least retry_after
        return {"Retry-After": email.utils.formatdate(time.time() + a.retry_after + 1, usegmt=True)}
    return {"Retry-After": str(a.retry_after)}


class _Quirks:
    """The oddities real servers show on the wire, each on demand, counted in ``/_stats`` ``quirks``."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.faults = _Schedule({"409": a.fail_409, "error_200": a.error_200})
        self.cuts = _Schedule({"cut": a.stream_cut})
        self.counts: collections.Counter[str] = collections.Counter()

    def instead_of_answer(self):
        """A 409, or a 200 whose body is an error, in their exact fractions (None: answer)."""
        fault = self.faults.next()
        self.counts[fault] += 1
        if fault == "409":
            return _error(409, "Conflict: the request collided with another one (injected)", "conflict", None)
        if fault == "error_200":
            return web.json_response({"error": {"message": "The server had an error processing your request "
                                                "(injected, in a 200)", "type": "server_error", "code": None}})
        return None

    def usage(self, usage: dict) -> dict:
        if self.a.usage_form == "string":
            return {k: f"{v}.5" for k, v in usage.items()}
        return usage

    def choices(self, out: list[dict], chat: bool, refusal: str | None) -> list[dict]:
        """Non-streamed choices as the quirks in force shape them."""
        if not chat:
            return out
        for choice in out:
            message = choice["message"]
            if refusal is not None:
                message["content"], message["refusal"] = None, refusal
                choice["finish_reason"] = "stop"
            elif self.a.content_form == "parts" and isinstance(message.get("content"), str):
                text = message["content"]
                half = len(text) // 2
                message["content"] = [{"type": "text", "text": text[:half]}, {"type": "text", "text": text[half:]}]
        return out

    def streams_oddly(self) -> bool:
        a = self.a
        return bool(a.stream_split or a.stream_cut or a.stream_usage != "asked")

    @staticmethod
    def _pieces(content: str, split: str) -> list[Any]:
        """Pieces of ``content``: every character that can be split is split across two pieces."""
        if split == "utf16":
            units = content.encode("utf-16-le")
            halves = [units[i:i + 2].decode("utf-16-le", "surrogatepass") for i in range(0, len(units), 2)]
            out, piece = [], ""
            for unit in halves:
                piece += unit
                if "\ud800" <= unit <= "\udbff":  # a high half: end the piece between the halves
                    out.append(piece)
                    piece = ""
            return out + [piece] if piece else out
        if split == "bytes":
            chunks, chunk = [], b""
            for char in content:
                raw = char.encode("utf-8")
                if len(raw) > 1:
                    chunks.append(chunk + raw[:1])
                    chunk = raw[1:]
                else:
                    chunk += raw
            return chunks + [chunk] if chunk else chunks
        step = max(1, math.ceil(len(content) / 8))
        return [content[s:s + step] for s in range(0, len(content), step)]

    async def stream(self, request, chat: bool, head: dict, choices: list, usage: dict, body: dict,
                     refusal: str | None):
        """Server-sent events, with the split, cut, usage and refusal quirks in force.

        A cut stream stops after half of its first choice's pieces, with no finish_reason and no
        ``[DONE]``. ``--cut-how close`` sends it as an HTTP/1.1 body delimited by closing the socket
        (no length, not chunked: the client sees a clean end); ``eof`` ends a chunked body properly.
        """
        a = self.a
        cut = self.cuts.next() == "cut"
        self.counts["cut" if cut else "whole"] += 1
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
        events: list[bytes] = []

        def send(choice_list: list, extra: dict | None = None) -> None:
            chunk = {**head, "choices": choice_list, **(extra or {})}
            if a.stream_split == "bytes":  # raw bytes of half a character: not valid UTF-8 alone
                data = json.dumps(chunk, ensure_ascii=False).encode("utf-8", "surrogateescape")
            else:
                data = json.dumps(chunk).encode()  # ensure_ascii: a lone UTF-16 half is a \\u escape
            events.append(b"data: " + data + b"\n\n")

        for i, content, _ in choices:
            key = "content" if refusal is None else "refusal"
            content = refusal if refusal is not None else (content or "")
            if chat:
                send([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                       "finish_reason": None}])
            pieces = self._pieces(content, a.stream_split) if isinstance(content, str) else [content]
            pieces = [p.decode("utf-8", "surrogateescape") if isinstance(p, bytes) else p for p in pieces]
            if cut:
                pieces = pieces[:max(1, len(pieces) // 2)]
            for piece in pieces:
                send([{"index": i, "delta": {key: piece}, "logprobs": None, "finish_reason": None} if chat
                      else {"index": i, "text": piece, "logprobs": None, "finish_reason": None}])
            if cut:
                break
            send([{"index": i, "delta": {}, "logprobs": None, "finish_reason": a.finish_reason} if chat
                  else {"index": i, "text": "", "logprobs": None, "finish_reason": a.finish_reason}])
        if not cut:
            if a.stream_usage == "asked" and (body.get("stream_options") or {}).get("include_usage"):
                send([], {"usage": usage})
            events.append(b"data: [DONE]\n\n")
        if cut and a.cut_how == "close":
            if request.transport is not None:
                request.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                        b"Connection: close\r\n\r\n" + b"".join(events))
                request.transport.close()
            return None  # the socket is closed: aiohttp discards whatever the handler returns
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for event in events:
            await resp.write(event)
        await resp.write_eof()
        return resp


# ---- reasoning models (issue 24) -----------------------------------------------------------------
# ``think=`` answers as a reasoning model does, with a trace logged in ``/_stats`` ``reasoning``
# ([the prompt answered, the trace]) so a test reads what was sent, never recomputes it:
# - ``inline``: ``<think>\ntrace\n</think>\n\n`` before the content (Qwen3, R1 without a parser);
# - ``open``: the content starts inside the block, its opening tag left in the prompt by the template;
# - ``unclosed``: the content is only ``<think>\ntrace`` and finish_reason ``length`` (cut while thinking);
# - ``reasoning_content`` / ``reasoning``: the trace in that message field (stream: in that delta field).
# Usage then counts the trace in completion_tokens and in ``completion_tokens_details.reasoning_tokens``.

_THINKING = {"think": ("--think", str, "", "inline, open, unclosed, reasoning_content or reasoning: answer as a "
                       "reasoning model does (see the region's comment)"),
             "tool_break": ("--tool-break", float, 0.0, "exact fraction of tool-call answers whose call is invalid "
                            "(alternately: an unknown tool's name, arguments missing a required key)"),
             "tool_parallel": ("--tool-parallel", int, 1, "calls per tool-call answer (the declared tools in turn, "
                               "or the one tool_choice names)"),
             "tool_pieces": ("--tool-pieces", int, 4, "a streamed call's arguments in this many fragments, one per "
                             "chunk")}
_THINK_FIELDS = ("reasoning_content", "reasoning")


def _thinking_options(p: argparse.ArgumentParser) -> None:
    for flag, kind, default, text in _THINKING.values():
        p.add_argument(flag, type=kind, default=default, help=text)


def _thinking_args(options: dict) -> list[str]:
    return [f"{_THINKING[k][0]}={v}" for k, v in options.items()]


class _Thinking:
    """The answers of a reasoning model, in the shape ``--think`` names (off by default)."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.mode = a.think
        self.log: list[list] = []
        self.sent = 0  # reasoning tokens reported in usage, over every reply
        self._traces: dict[int, str] = {}

    def apply(self, choices: list, prompts: list[str]) -> list:
        """The choices' contents as the mode shapes them; the traces kept for usage and fields."""
        self._traces = {}
        if not self.mode:
            return choices
        out = []
        for i, content, lp in choices:
            prompt = prompts[0] if prompts else ""
            trace = f"Let me think. The request is {prompt[:24]!r}; answer {i} follows from it."
            self._traces[i] = trace
            self.log.append([prompt, trace])
            if self.mode == "inline":
                content = f"<think>\n{trace}\n</think>\n\n{content or ''}"
            elif self.mode == "open":
                content = f"{trace}\n</think>\n\n{content or ''}"
            elif self.mode == "unclosed":
                content = f"<think>\n{trace}"
            out.append((i, content, lp))
        return out

    def usage(self, usage: dict) -> dict:
        if not self._traces:
            return usage
        thought = sum(_tokens(len(t)) for t in self._traces.values())
        extra = thought if self.mode in _THINK_FIELDS else 0  # inline traces are in the content already
        usage = {**usage, "completion_tokens": usage["completion_tokens"] + extra,
                 "total_tokens": usage["total_tokens"] + extra}
        usage["completion_tokens_details"] = {"reasoning_tokens": thought}
        self.sent += thought
        return usage

    def choices(self, out: list[dict], chat: bool) -> list[dict]:
        for choice in out:
            trace = self._traces.get(choice["index"])
            if trace is None:
                continue
            if chat and self.mode in _THINK_FIELDS:
                choice["message"][self.mode] = trace
            choice["finish_reason"] = self.finish(choice["index"], choice["finish_reason"])
        return out

    def snapshot(self) -> "_Thinking":
        """This request's traces, apart from the next request's (a stream awaits between chunks)."""
        copy = object.__new__(_Thinking)
        copy.mode, copy.log, copy._traces, copy.sent = self.mode, self.log, dict(self._traces), 0
        return copy

    def deltas(self, index: int) -> list[dict]:
        """A streamed choice's trace, in pieces, in its own delta field (none for inline modes)."""
        trace = self._traces.get(index)
        if trace is None or self.mode not in _THINK_FIELDS:
            return []
        step = max(1, math.ceil(len(trace) / 4))
        return [{self.mode: trace[s:s + step]} for s in range(0, len(trace), step)]

    def finish(self, index: int, finish: str) -> str:
        return "length" if self.mode == "unclosed" and index in self._traces else finish


# ---- tool calls (issue 24 §2) -------------------------------------------------------------------
# A chat request with ``tools`` is answered with one call (``content: null``, finish_reason
# ``tool_calls``) of the tool ``tool_choice`` names, else the first tool, with arguments valid under
# its parameters (the schema rules above); ``--tool-break`` breaks an exact fraction of them. Each
# call is logged in ``/_stats`` ``tool_calls`` as [first user message, name, arguments, broken?].
# ``--tool-parallel N`` makes N calls per answer. Streamed, the calls go out as OpenAI streams them
# (index, id and name, then the arguments in ``--tool-pieces`` fragments); Ollama's /api/chat gets
# them in Ollama's form (arguments an object). Anthropic's form: testing/anthropic_batches.py.

class _ToolCalls:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.schedule = _Schedule({"break": a.tool_break})
        self.log: list[list] = []

    def choices(self, out: list[dict], body: dict, prompt: str) -> list[dict]:
        tools = [t.get("function") or {} for t in body.get("tools") or [] if isinstance(t, dict)]
        if not tools:
            return out
        choice = body.get("tool_choice")
        wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        tool = next((t for t in tools if t.get("name") == wanted), tools[0])
        first = next((_text(m.get("content")) for m in body.get("messages") or []
                      if isinstance(m, dict) and m.get("role") == "user"), prompt)
        for c in out:
            calls = []
            for slot in range(max(1, self.a.tool_parallel)):  # --tool-parallel: the declared tools in turn
                tool_k = tool if wanted or slot == 0 else tools[slot % len(tools)]
                parameters = tool_k.get("parameters") or {"type": "object", "properties": {}}
                name, arguments = tool_k.get("name"), _instance(parameters, parameters, first, chars=self.a.echo_chars)
                broken = self.schedule.next() == "break"
                if broken:
                    if len(self.log) % 2 == 0 or not parameters.get("required"):
                        name = f"{name}_unknown"
                    else:
                        arguments = {k: v for k, v in arguments.items() if k != parameters["required"][0]}
                text = json.dumps(arguments)
                self.log.append([first, name, text, broken])
                calls.append({"id": f"call_{len(self.log)}", "type": "function",
                              "function": {"name": name, "arguments": text}})
            c["message"] = {"role": "assistant", "content": None, "tool_calls": calls}
            c["finish_reason"] = "tool_calls"
        return out

    def ollama(self, message: dict, body: dict, prompt: str) -> dict:
        """Ollama's ``message`` for a chat with ``tools``: ``tool_calls`` whose arguments are an object
        (not JSON text, as Ollama sends them), content ""; the message as it is without tools."""
        if not body.get("tools"):
            return message
        (choice,) = self.choices([{"index": 0, "message": dict(message), "finish_reason": "stop"}], body, prompt)
        return {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
            for c in choice["message"]["tool_calls"]]}

    async def stream(self, request, head: dict, choices: list, usage: dict, body: dict, prompt: str):
        """A streamed answer with tools, as OpenAI streams calls: per call, a delta with its index, id
        and name (arguments ""), then its arguments in ``--tool-pieces`` fragments across chunks;
        the choice ends with ``finish_reason: tool_calls``. Logged as the whole answers are."""
        out = self.choices([{"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
                            for i, c, _ in choices], body, prompt)
        head = {**head, "object": "chat.completion.chunk"}
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(index: int, delta: dict, finish: str | None = None) -> None:
            chunk = {**head, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        for choice in out:
            i = choice["index"]
            await send(i, {"role": "assistant", "content": None})
            for k, call in enumerate(choice["message"]["tool_calls"]):
                await send(i, {"tool_calls": [{"index": k, "id": call["id"], "type": "function",
                                               "function": {"name": call["function"]["name"], "arguments": ""}}]})
                text = call["function"]["arguments"]
                step = max(1, math.ceil(len(text) / max(1, self.a.tool_pieces)))
                for s in range(0, len(text), step):
                    await send(i, {"tool_calls": [{"index": k, "function": {"arguments": text[s:s + step]}}]})
            await send(i, {}, choice["finish_reason"])
        if (body.get("stream_options") or {}).get("include_usage"):
            chunk = {**head, "choices": [], "usage": usage}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


# What starts a stub's process: a new interpreter. A test harness that starts hundreds of stubs may
# put here a launcher with ``subprocess.Popen``'s signature that forks them from a process that has
# imported this module already (the project's tests do: tests/warm_cli.py).
popen = subprocess.Popen

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StubServer:
    """Runs the stub server in a subprocess; use as a context manager in tests and benches."""

    def __init__(self, *, latency: float = 0.0, jitter_sigma: float = 0.0, fail_500: float = 0.0,
                 fail_429: float = 0.0, drop: float = 0.0, malformed: float = 0.0,
                 retry_after: float = 0.2, throttle_above: int = 0, ignore_n: bool = False,
                 reward: bool = False, reward_content_only: bool = False, reply: str = "echo",
                 api_key: str | None = None, context_length: int = 0, finish_reason: str = "stop",
                 status: int = 0, drip: float = 0.0, port: int = 0,
                 models: str = "", schema_break: float = 0.0, usage: tuple[int, int] | None = None,
                 batch_seconds: float = 1.0, batch_expire: bool = False, pick: str = "length",
                 echo_chars: int = 30, batch_create_delay: float = 0.0, extra_args: tuple[str, ...] = (),
                 **quirks: Any) -> None:
        """``port`` 0 picks a free port; a fixed one lets a test put a healthy server where a failing one was."""
        self.args = [f"--latency={latency}", f"--jitter-sigma={jitter_sigma}",
                     f"--finish-reason={finish_reason}", f"--status={status}", f"--drip={drip}",
                     f"--fail-500={fail_500}", f"--fail-429={fail_429}", f"--drop={drop}",
                     f"--malformed={malformed}", f"--retry-after={retry_after}",
                     f"--throttle-above={throttle_above}", f"--reply={reply}",
                     f"--context-length={context_length}", f"--models={models}",
                     f"--schema-break={schema_break}", f"--pick={pick}", f"--echo-chars={echo_chars}"]
        self.args += [f for f, on in (("--ignore-n", ignore_n), ("--reward", reward),
                                      ("--reward-content-only", reward_content_only)) if on]
        if api_key:
            self.args.append(f"--api-key={api_key}")
        if usage:
            self.args.append(f"--usage={usage[0]},{usage[1]}")
        self.args.append(f"--batch-seconds={batch_seconds}")
        if batch_expire:
            self.args.append("--batch-expire")
        if batch_create_delay:
            self.args.append(f"--batch-create-delay={batch_create_delay}")
        self.args += _quirk_args({k: v for k, v in quirks.items() if k not in _THINKING})
        self.args += _thinking_args({k: v for k, v in quirks.items() if k in _THINKING})
        self.args += list(extra_args)  # options of their own modules, e.g. queueing.queue_args(...)
        self.port = port
        self._proc: ServerProcess | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """The server process's id (benches sample its CPU), or None when it is not running."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> "StubServer":
        """Launch the subprocess and wait (max 30 s) for its ``READY <port>`` line."""
        self._buf = b""
        self._proc = ServerProcess([sys.executable, "-m", "recipe.testing.stub_server", f"--port={self.port}",
                                    *self.args], "stub server", capture_stdout=True, error=RuntimeError,
                                   popen=popen)
        line = self._proc.start(self._ready_line, timeout=30).decode(errors="replace")
        if not line.startswith("READY "):
            message = f"stub server did not start: {line!r}\n{self._proc.output()}"
            self.stop()
            raise RuntimeError(message)
        self.port = int(line.split()[1])
        return self

    def _ready_line(self) -> bytes | None:
        """The first line the server prints, once it is complete (waits up to 0.2 s for more)."""
        assert self._proc is not None, "called only by start(), after the launch"
        fd = self._proc.stdout.fileno()
        if select.select([fd], [], [], 0.2)[0]:
            self._buf += os.read(fd, 4096)
        return self._buf.split(b"\n", 1)[0] + b"\n" if b"\n" in self._buf else None

    def stop(self) -> None:
        """Terminate the subprocess, killing it if it does not exit within 5 s."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop(grace=5)

    def __enter__(self) -> "StubServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict:
        """Counters kept by the server (see ``GET /_stats``)."""
        with _NO_PROXY.open(f"http://{HOST}:{self.port}/_stats", timeout=30) as r:
            return json.loads(r.read())

    def set_models(self, models: str) -> None:
        """Change which models exist (comma-separated; empty: any model answers)."""
        req = urllib.request.Request(f"http://{HOST}:{self.port}/_models", data=models.encode(), method="POST")
        with _NO_PROXY.open(req, timeout=30) as r:
            r.read()

    def reset(self) -> None:
        """Zero the server's counters and restart the fault schedule."""
        req = urllib.request.Request(f"http://{HOST}:{self.port}/_reset", data=b"", method="POST")
        with _NO_PROXY.open(req, timeout=30) as r:
            r.read()


if __name__ == "__main__":
    main()
