"""litellm-backed implementations of :mod:`recipe.clients.model_client`.

Request building, response reading, retries, the ``n`` top-up and the cache are written
once, in :class:`AsyncLiteLLMClient`. :class:`LiteLLMClient` runs the same coroutines on the
process's background loop (:mod:`recipe.clients.event_loop`), because litellm's logging
worker binds to one loop and a second, sync code path would duplicate every rule below.

Reasoning models: ``query_model`` returns the answers only, never the reasoning (the ABC's
signature is NeMo Curator's, unchanged). Library users who want the trace call the second method,
:meth:`AsyncLiteLLMClient.query_answers` (same arguments; ``LiteLLMClient.query_answers`` too),
which returns :class:`recipe.clients.reply.Answer` objects: ``.text`` is what ``query_model``
would return, ``.reasoning`` the model's trace (None when it gave none), wherever the server put it.
Beyond the ABC's sampling keywords, ``query_answers`` takes ``reasoning_effort`` (sent as is, e.g.
``low``) and ``thinking_budget`` (Anthropic's ``thinking`` with ``budget_tokens``); ``query_model``
keeps the ABC's keywords exactly (a test pins them to the spec). ``extra_body`` given to the
client goes into every request's body (e.g. ``{"chat_template_kwargs": {"enable_thinking": false}}``).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import random
import time
from collections.abc import Iterable
from typing import Any

from recipe import errors
from recipe.config import defaults
from recipe.clients.conversation_formatter import ConversationFormatter
from recipe.clients.error_mapping import translate
from recipe.clients.event_loop import run_sync
from recipe.clients import providers, reply
from recipe.clients import structured_output as structured
from recipe.clients.lean_http import LeanRoute, takes_lean_path
from recipe.clients.limits import LocalLimiter
from recipe.clients.litellm_setup import ensure_model_known, get_litellm, unlogged
from recipe.clients.model_client import AsyncLLMClient, LLMClient
from recipe.clients import provenance
from recipe.clients.tokens import estimate_tokens
from recipe.clients.usage import UsageStats

# The budget ticket of the attempt running in this task: its usage settles the reservation.
_TICKET: contextvars.ContextVar = contextvars.ContextVar("recipe_budget_ticket", default=None)
# Why the answer being produced must not be cached (a truncated answer kept by on_truncated=keep).
_UNCACHEABLE: contextvars.ContextVar = contextvars.ContextVar("recipe_uncacheable", default=None)
# The replica of the attempt running in this task (backend.api_base a list): its URL replaces api_base.
_REPLICA_URL: contextvars.ContextVar = contextvars.ContextVar("recipe_replica_url", default=None)
REPLICAS_ENDPOINT = "replicas"  # how cache keys name a list of replicas: the same whatever the list holds


def _at_replica(payload: dict) -> dict:
    url = _REPLICA_URL.get()
    return payload if url is None else {**payload, "api_base": url}
# Reasoning controls a user sets on purpose: sent even to a route whose litellm table does not list them.
_PASSED_AS_GIVEN = ("reasoning_effort", "thinking")


_read_field = reply.field
def _outcome(error: BaseException, retried: bool) -> str:
    """A failed attempt's outcome for the per-minute timings (see ``request_timings.OUTCOMES``)."""
    if isinstance(error, errors.RateLimitError):
        return "rate_limited"
    return "retried" if retried and getattr(error, "retryable", False) else "failed"




def parse_reward_scores(response: Any, provider: str = "") -> dict[str, float]:
    """Scores from an NVIDIA reward response: ``choices[0].logprobs.content``, else the content."""
    choices = _read_field(response, "choices")
    if not choices or not isinstance(choices, list):
        raise reply.error_in_body(response, provider) or errors.MalformedResponseError(
            f"{provider}: the reward response has no choices")
    choice = choices[0]
    logprobs = _read_field(choice, "logprobs")
    entries = _read_field(logprobs, "content") if logprobs is not None else None
    scores: dict[str, float] = {}
    for entry in entries or []:
        token, value = _read_field(entry, "token"), _read_field(entry, "logprob")
        if token is not None and value is not None:
            scores[str(token).strip()] = float(value)
    if scores:
        return scores
    content = _read_field(_read_field(choice, "message"), "content") or ""
    for part in str(content).split(","):
        name, sep, value = part.partition(":")
        try:
            if sep:
                scores[name.strip()] = float(value)
        except ValueError:
            scores.clear()
            break
    if not scores:
        raise ValueError(f"no scores in the response ({str(content)[:80]!r}): the model is likely not a reward model")
    return scores


class AsyncLiteLLMClient(AsyncLLMClient):
    """Any provider litellm reaches, with retries, limits and an optional request cache.

    Args:
        provider: litellm's provider prefix (``nvidia_nim``, ``openai``, ``hosted_vllm``,
            ``ollama``, ...); ``model`` given per call is the name at that provider.
        api_base, api_key, timeout: where and how to reach it (``backend.*`` in configs).
        num_retries: retries of retryable errors (429, 5xx, timeouts, dropped connections,
            malformed responses), with exponential backoff and jitter, honouring Retry-After.
        max_concurrency, rpm, tpm: limits for this process; pass ``limiter`` for cluster-wide ones.
        adaptive_concurrency: ``max_concurrency`` is the ceiling of a limit adapted from latency
            (``backend.max_concurrency: auto``, :mod:`recipe.clients.adaptive`).
        cache: a :class:`recipe.cache.sqlite.RequestCache`; hits send no request.
        endpoint_id: names the endpoint in cache keys instead of ``api_base``.
        structured_output: the backend's schema dialect (a key of
            :data:`recipe.clients.structured_output.DIALECTS`); None: the provider's own.
        on_truncated: an answer cut at ``max_tokens``: ``keep`` it (this class's default, as
            NeMo Curator's clients do; runs take ``backend.on_truncated``, default ``error``),
            make it an ``error`` (:class:`~recipe.errors.TruncatedError`), or ``retry`` it. An
            empty answer is never a success (:class:`~recipe.errors.EmptyAnswerError`); neither
            is cached.

    ``timeout`` is a deadline for each whole attempt (connect, wait and read, streams included),
    not for each read: a server that drips a byte every second cannot hold a request longer.
    """

    def __init__(self, *, provider: str, api_base: str | None = None, api_key: str | None = None,
                 timeout: float = defaults.TIMEOUT, num_retries: int = defaults.NUM_RETRIES,
                 max_concurrency: int = defaults.MAX_CONCURRENCY, adaptive_concurrency: bool = False,
                 rpm: float | None = None, tpm: float | None = None, limiter: Any = None,
                 cache: Any = None, endpoint_id: str | None = None,
                 backoff_base: float = 0.5, backoff_max: float = 30.0,
                 stats: UsageStats | None = None, structured_output: str | None = None,
                 on_truncated: str = "keep", budget: Any = None, batcher: Any = None,
                 extra_body: dict | None = None):
        if on_truncated not in ("keep", "error", "retry"):
            raise ValueError(f"on_truncated must be keep, error or retry, not {on_truncated!r}")
        self.provider = provider
        self.structured_dialect = structured.dialect_for(provider, structured_output)
        self.on_truncated = on_truncated
        self.replica_urls: tuple[str, ...] = tuple(api_base) if isinstance(api_base, (list, tuple)) else ()
        self.api_base = self.replica_urls[0] if self.replica_urls else api_base
        self.extra_body = dict(extra_body or {})  # backend.extra_body: merged into every request's body
        self._api_key = api_key
        self.timeout = float(timeout)
        self.num_retries = int(num_retries)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stats = stats if stats is not None else UsageStats()
        if limiter is None and self.replica_urls:
            from recipe.clients.replicas import ReplicaSet

            limiter = ReplicaSet(self.replica_urls, max_concurrency, rpm, tpm, stats=self.stats,
                                 adaptive=adaptive_concurrency)
        self.limiter: Any = limiter or LocalLimiter(max_concurrency, rpm, tpm, stats=self.stats,
                                               adaptive=adaptive_concurrency)
        self.cache = cache
        self.budget = budget  # recipe.clients.budget: reserve before each attempt, settle after
        self.batcher = batcher  # recipe.clients.batch: requests go through the provider's batch API
        # What names the endpoint in cache keys: api_base, unless the address is not stable
        # (the embedded llama.cpp server gets a new port each run).
        # A list of replicas is one endpoint, whichever replicas it lists (recipe.clients.replicas).
        self.endpoint_id = endpoint_id or (REPLICAS_ENDPOINT if self.replica_urls else api_base)
        self._lean_routes: dict[tuple, LeanRoute] = {}
        # The breaker of a fallback chain's primary (recipe.clients.fallbacks.Breaker): told each attempt's outcome.
        self.health: Any = None

    @property
    def endpoint_name(self) -> str:
        """How stats.json names this endpoint (its URL, or the provider's default one)."""
        return self.api_base or self.provider

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(provider={self.provider!r}, api_base={self.api_base!r})"

    def __reduce__(self):
        raise TypeError("clients hold connections and are never pickled; ship the config and build one per process")

    # ---- request building -------------------------------------------------------------
    def _sampling(self, max_tokens, seed, stop, temperature, top_k, top_p, reasoning_effort=None,
                  thinking_budget=None) -> dict:
        params = {"max_tokens": max_tokens, "seed": seed, "stop": stop, "temperature": temperature,
                  "top_k": top_k, "top_p": top_p, "reasoning_effort": reasoning_effort}
        if thinking_budget is not None:  # Anthropic's form; litellm maps it where a provider has its own
            params["thinking"] = {"type": "enabled", "budget_tokens": int(thinking_budget)}
        return {k: v for k, v in params.items() if v is not None}  # None: not sent

    def _endpoint_kwargs(self, route: str) -> dict:
        """Where and how to connect; one attempt per call (our loop does the retries)."""
        api_base, api_key = self.api_base, self._api_key
        owner = providers.provider(self.provider)
        if route != owner.chat_route and (owner.env_base or owner.default_base):
            # The formatter path leaves the provider's chat route (nvidia_nim/ would wrap the prompt
            # into a chat message), so the provider's own endpoint is filled in here, not the route's.
            api_base = api_base or providers.first_env(owner.env_base) or owner.default_base
            api_key = api_key or providers.first_env(owner.env_key)
        api_base = providers.api_base_for(route, api_base)
        if api_key is None and api_base and providers.route(route).openai_compatible:
            api_key = "no-key"  # a keyless OpenAI-compatible server (llama.cpp, vLLM); the SDK insists on one
        kwargs: dict[str, Any] = {"api_base": api_base, "api_key": api_key,
                                  "timeout": self.timeout, "max_retries": 0}
        if providers.route(route).allowlist:
            kwargs["allowed_openai_params"] = ["max_retries"]
        return kwargs

    def _wire_kwargs(self, route: str, n: int, params: dict, schema_params: dict | None = None) -> dict:
        kwargs = self._endpoint_kwargs(route)
        if self.extra_body:
            kwargs["extra_body"] = dict(self.extra_body)
        params = dict(params)
        for name in _PASSED_AS_GIVEN:  # asked for explicitly: sent even where litellm's table lacks it
            if name in params:
                kwargs["allowed_openai_params"] = [*kwargs.get("allowed_openai_params", []), name]
        top_k = params.pop("top_k", None)
        if top_k is not None:
            if providers.route(route).openai_compatible:
                kwargs["extra_body"] = {**kwargs.get("extra_body", {}), "top_k": top_k}
            else:
                params["top_k"] = top_k  # litellm maps it (ollama options) or refuses it loudly
        if n != 1:
            params["n"] = n
            if providers.route(route).allowlist:  # NIM's allowlist refuses n unless told (shared notes)
                kwargs["allowed_openai_params"] = [*kwargs.get("allowed_openai_params", []), "n"]
        kwargs.update(params)
        for name, value in (schema_params or {}).items():  # the schema's wire form (structured_output)
            if name == "extra_body":
                kwargs["extra_body"] = {**kwargs.get("extra_body", {}), **value}
            else:
                kwargs[name] = value
                if providers.route(route).allowlist:
                    kwargs["allowed_openai_params"] = [*kwargs.get("allowed_openai_params", []), name]
        return kwargs

    def _route(self, text: bool) -> str:
        """litellm's provider prefix for chat requests, or for the formatter's text completions."""
        owner = providers.provider(self.provider)
        return owner.text_route if text else owner.chat_route

    def transport(self, formatted: bool = False) -> str:
        """Which path this client's requests take: ``"lean"`` (litellm's provider configuration
        plus one aiohttp session, :mod:`recipe.clients.lean_http`) or ``"litellm"`` (``acompletion``)."""
        return "lean" if takes_lean_path(self._route(formatted)) else "litellm"

    # ---- attempts, with retries -------------------------------------------------------
    async def _with_retries(self, tokens: int, attempt_once, charge: tuple | None = None) -> Any:
        """Run ``attempt_once()`` under the limiter, retrying what may succeed next time.

        ``charge`` is ``(model, prompt tokens, max_tokens)`` for the budget: each attempt reserves
        its worst case first (raising BudgetExhausted, unsent, when it does not fit).
        """
        attempt = failovers = 0
        while True:
            async with self.limiter.slot(tokens) as replica:
                if self.health is not None:  # a fallback chain's primary: its breaker may send this on
                    self.health.check()
                where = replica.url if replica is not None else self.endpoint_name
                url_token = _REPLICA_URL.set(replica.url if replica is not None else None)
                ticket = await self.budget.reserve(*charge) if self.budget is not None and charge else None
                token = _TICKET.set(ticket)
                try:
                    self.stats.count("requests")
                    started = time.monotonic()
                    # The SDK's timeout bounds each socket read; this bounds the attempt.
                    result = await asyncio.wait_for(attempt_once(), self.timeout)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # ValueErrors, but a bad reply
                    error = translate(exc, provider=self.provider, secrets=(self._api_key,))
                except asyncio.TimeoutError:
                    error = errors.RequestTimeoutError(f"{self.provider}: no complete answer within "
                                                f"backend.timeout={self.timeout:g} s")
                except ValueError:
                    raise  # a caller's mistake or a non-reward model: retrying cannot help
                except Exception as exc:  # translated here, in one place
                    error = translate(exc, provider=self.provider, secrets=(self._api_key,))
                else:
                    latency = time.monotonic() - started
                    self.limiter.on_success(latency)
                    if self.health is not None:
                        self.health.observe(None)
                    self.stats.endpoint(where, latency)
                    self.stats.time_request(latency, "ok", time.time())
                    return result
                finally:
                    _TICKET.reset(token)
                    _REPLICA_URL.reset(url_token)
                    if ticket is not None:
                        await self.budget.settle(ticket)
            self.stats.time_request(time.monotonic() - started, _outcome(error, attempt < self.num_retries),
                                    time.time())
            self.stats.endpoint(where, error=type(error).__name__)
            if self.health is not None:
                self.health.observe(error)
            if isinstance(error, errors.RateLimitError):
                self.stats.count("rate_limited")
                self.limiter.on_rate_limited(error.retry_after, started)
            if replica is not None:  # several replicas: the set keeps their health
                self.limiter.on_failure(error)
                if failovers < len(self.replica_urls) and self.limiter.fails_over(error):
                    failovers += 1  # another replica takes it at once; no retry spent
                    self.stats.count("failovers")
                    continue
            if not error.retryable or attempt >= self.num_retries:
                self.stats.fail(type(error).__name__)
                raise error
            attempt += 1
            self.stats.count("retries")
            delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
            delay = max(delay, error.retry_after or 0.0)
            self.stats.count("retry_wait_seconds", delay)
            await asyncio.sleep(delay)

    def _caller(self, route: str, model: str, text: bool = False):
        """The call for ``route/model``: the lean HTTP path where litellm's provider configuration
        allows it (resolved once per client and route), else ``litellm.acompletion``."""
        if takes_lean_path(route):
            key = (route, model, text)
            lean = self._lean_routes.get(key)
            if lean is None:
                lean = self._lean_routes[key] = LeanRoute(route, model, text)
            return lean
        litellm = get_litellm()
        call = litellm.atext_completion if text else litellm.acompletion
        wire_model = f"{route}/{model}"
        ensure_model_known(wire_model, route)

        async def send(**payload: Any) -> Any:
            # "no-log" and unlogged(): litellm queues no logging handler for this call (they printed
            # tracebacks at exit and cost work); we keep our own counters.
            with unlogged():
                return await call(model=wire_model, **payload, **{"no-log": True})

        return send

    def _streams_usage(self, route: str, model: str, text: bool, send: Any) -> bool:
        """Whether to ask ``route`` for a stream's usage (``stream_options.include_usage``): where
        litellm's configuration of the route takes the parameter, on either path."""
        if isinstance(send, LeanRoute):
            return send.supports("stream_options")
        try:
            supported = get_litellm().get_supported_openai_params(model=model, custom_llm_provider=route) or ()
        except Exception:  # noqa: BLE001 - a route litellm cannot describe: do not ask
            return False
        return "stream_options" in supported

    async def _cached(self, key: dict, produce) -> Any:
        """The stored answer for ``key``, or ``await produce()`` stored under it.

        The cache runs on its own threads (never on the loop all requests share). A cache that
        fails (locked, corrupt, disk full) is bypassed: the request goes out live, the failure is
        reported once, and the cache stays off in this process for the rest of the run.
        """
        cache = self.cache
        if cache is not None:
            try:
                hit = await cache.aget(key)
            except Exception as exc:  # noqa: BLE001 - any failure of the store, never the record's
                self._cache_failed(exc)
                hit = None
            if hit is not None:
                self.stats.count("cache_hits")
                provenance.note(key, cached=True)
                return hit
        marks: list[str] = []
        reset = _UNCACHEABLE.set(marks)
        try:
            answer = await produce()
        finally:
            _UNCACHEABLE.reset(reset)
        provenance.note(key, cached=False)
        cache = self.cache
        if cache is not None and not marks:  # a truncated answer kept by on_truncated=keep is not stored
            try:
                await cache.aput(key, answer)
            except Exception as exc:  # noqa: BLE001
                self._cache_failed(exc)
        return answer

    def _cache_failed(self, exc: BaseException) -> None:
        if self.cache is None:
            return None
        where, self.cache = getattr(self.cache, "path", "?"), None
        self.stats.cache_failed(f"request cache {where}: {type(exc).__name__}: {exc}; "
                                "bypassed for the rest of the run (live requests)")
        return None

    async def _send(self, route: str, model: str, payload: dict, stream: bool, text: bool) -> list[reply.Answer]:
        send = self._caller(route, model, text)
        prompt_tokens = estimate_tokens(payload.get("prompt") or payload.get("messages"))

        # A reasoning request may think beyond max_tokens (a thinking budget, a provider that does
        # not count the trace in it): its worst case is the model's maximum output.
        bound = None if self._thinks(model, payload) else payload.get("max_tokens")
        worst = bound or (self.budget.spec.worst_case_output(model) if self.budget is not None else 0)
        estimate = (prompt_tokens, worst)
        if stream and self._streams_usage(route, model, text, send):
            payload = {**payload, "stream_options": {"include_usage": True}}  # else streams report no usage

        async def once() -> list[reply.Answer]:
            return await self._read(await send(stream=stream, **_at_replica(payload)), stream, text, model, estimate)

        charge = (model, prompt_tokens, bound) if self.budget is not None else None
        if self.batcher is not None:
            return await self._send_batched(route, model, payload, text, charge, estimate)
        # tpm pacing books the prompt plus the answer's bound (256 when the request sets none)
        return await self._with_retries(prompt_tokens + (payload.get("max_tokens") or 256), once, charge)

    async def _send_batched(self, route: str, model: str, payload: dict, text: bool, charge: tuple | None,
                            estimate: tuple | None = None) -> list[reply.Answer]:
        """One request as a line of a provider batch (never streamed); the budget charges it the same way."""
        ticket = await self.budget.reserve(*charge) if self.budget is not None and charge else None
        token = _TICKET.set(ticket)
        try:
            return await self._read(await self.batcher.request(route, model, payload, text), False, text, model,
                                    estimate)
        finally:
            _TICKET.reset(token)
            if ticket is not None:
                await self.budget.settle(ticket)

    def _thinks(self, model: str, payload: dict) -> bool:
        """Whether a request is a reasoning one for the budget: it asks for reasoning, or the run
        says the model reasons (``model.reasoning``, else litellm's map)."""
        if payload.get("reasoning_effort") not in (None, "none") or payload.get("thinking"):
            return True
        return self.budget is not None and model in getattr(self.budget.spec, "reasoning_models", ())

    async def _read(self, response: Any, stream: bool, text: bool, model: str,
                    estimate: tuple | None = None) -> list[reply.Answer]:
        """Texts in choice order; streams are accumulated per choice index.

        Every rule of :mod:`recipe.clients.reply` applies here, on both paths: content parts are
        joined, a stream's split characters made whole, an error body raised as the server's
        error. A streamed choice that never got a ``finish_reason`` was cut short
        (:class:`~recipe.errors.IncompleteAnswerError`, retried). Each text is then checked by
        :meth:`_accept`, inside the attempt, so the retry loop applies ``on_truncated`` and the
        cache never stores what is not an answer. ``estimate`` is ``(prompt tokens, worst-case
        answer tokens)``: the usage settled when the server reports none.
        """
        if stream:
            parts: dict[int, list[str]] = {}
            thoughts: dict[int, list[str]] = {}
            called: dict[int, dict[int, dict]] = {}
            refusals: dict[int, list[str]] = {}
            finish: dict[int, Any] = {}
            usage = None
            async for chunk in response:
                failure = reply.error_in_body(chunk, self.provider)
                if failure is not None:
                    raise failure
                usage = reply.field(chunk, "usage") or usage
                choices = reply.field(chunk, "choices") or []
                if not isinstance(choices, list):
                    raise errors.MalformedResponseError(f"{self.provider}: a stream chunk's choices are not a list")
                for choice in choices:
                    index = reply.field(choice, "index") or 0
                    delta = choice if text else reply.field(choice, "delta")
                    piece = reply.content_text(reply.field(delta, "text" if text else "content"))
                    parts.setdefault(index, []).append(piece if isinstance(piece, str) else "")
                    thoughts.setdefault(index, []).append(reply.reasoning_text(delta))
                    reply.add_call_pieces(called.setdefault(index, {}), delta)
                    refused = reply.field(delta, "refusal")
                    if isinstance(refused, str) and refused:
                        refusals.setdefault(index, []).append(refused)
                    finish[index] = reply.field(choice, "finish_reason") or finish.get(index)
            texts = {i: reply.whole_text(parts[i], self.provider) for i in sorted(parts)}
            self._record_usage(usage, model, estimate, list(texts.values()))
            if not texts:
                raise errors.MalformedResponseError(f"{self.provider}: the stream has no choices")
            cut = [i for i in texts if finish.get(i) is None]
            if cut:
                raise errors.IncompleteAnswerError(
                    f"{self.provider}: the stream ended without a finish_reason (choice {cut[0]}, "
                    f"{len(texts[cut[0]])} characters in): the answer was cut short")
            return [self._accept(texts[i], finish.get(i), reply.whole_text(refusals.get(i, []), self.provider) or None,
                                 reply.whole_text(thoughts.get(i, []), self.provider) or None,
                                 [called[i][k] for k in sorted(called.get(i, {}))])
                    for i in texts]
        choices = reply.field(response, "choices")
        if not choices:
            failure = reply.error_in_body(response, self.provider)
            raise failure or errors.MalformedResponseError(f"{self.provider}: response has no choices")
        if not isinstance(choices, list):
            raise errors.MalformedResponseError(f"{self.provider}: the response's choices are not a list")
        ordered = sorted(choices, key=lambda c: reply.field(c, "index") or 0)
        said = [reply.field(c, "text") if text else reply.content_text(reply.field(reply.field(c, "message"), "content"))
                for c in ordered]
        said = [reply.repaired(t, self.provider) if isinstance(t, str) else t for t in said]
        self._record_usage(reply.field(response, "usage"), model, estimate, said)
        given = [reply.reasoning_text(c if text else reply.field(c, "message")) or None for c in ordered]
        return [self._accept(t, reply.field(c, "finish_reason"), reply.field(reply.field(c, "message"), "refusal"), r,
                             reply.tool_calls_of(reply.field(c, "message")))
                for t, c, r in zip(said, ordered, given)]

    def _accept(self, content: Any, finish_reason: Any, refusal: Any = None,
                reasoning: str | None = None, tool_calls: list | None = None) -> reply.Answer:
        """The answer, its reasoning apart, or the error a refused, filtered, empty or truncated
        answer is. An answer that is only reasoning cut at max_tokens (an unclosed think block, or
        a trace with no content yet) is truncated whatever ``on_truncated`` says: nothing to keep."""
        retry = self.on_truncated == "retry"
        reason = str(getattr(finish_reason, "value", finish_reason) or "")
        content, reasoning, unclosed = reply.with_reasoning(content, reasoning)
        if unclosed or (reasoning and not content and reason == "length"):
            raise errors.TruncatedError(f"{self.provider}: the answer was cut at max_tokens while the model was "
                                        "still thinking (no answer after the reasoning); raise sampling.max_tokens "
                                        "or lower sampling.reasoning_effort", None, retry)
        if isinstance(refusal, str) and refusal and not content:
            raise errors.RefusalError(f"{self.provider}: the model refused: {refusal[:200]}", None, refusal)
        if reason == "content_filter":
            raise errors.ContentFilterError(f"{self.provider}: the provider's content filter stopped the answer "
                                            "(finish_reason content_filter)")
        cut = reason == "length"
        if tool_calls and not cut:  # content null beside tool calls: the calls are the answer
            return reply.Answer(content if isinstance(content, str) else "", reasoning, tool_calls)
        if content is None or content == "":
            why = " (cut at max_tokens before any text)" if cut else ""
            raise errors.EmptyAnswerError(f"{self.provider}: the answer is empty{why}", None, retry)
        if not isinstance(content, str):  # the lean path reads plain JSON, where a server may put anything
            raise errors.MalformedResponseError(f"{self.provider}: answer content is {type(content).__name__}, "
                                                "not text")
        if cut and self.on_truncated != "keep":
            raise errors.TruncatedError(f"{self.provider}: the answer was cut at max_tokens (finish_reason "
                                        "length); raise sampling.max_tokens, or set backend.on_truncated="
                                        "keep or retry", None, retry)
        if cut:  # kept, as asked, but never cached: a later run may want it whole
            marks = _UNCACHEABLE.get()
            if marks is not None:
                marks.append("truncated")
        return reply.Answer(str(content), reasoning)

    def _record_usage(self, usage: Any, model: str, estimate: tuple | None = None,
                      texts: list | None = None) -> None:
        """Count the reply's usage; when it reports none, settle at the estimate (never at 0).

        The budget is charged the reserved worst case (``estimate``: prompt tokens, max answer
        tokens); the tokens counted for ``cost_usd`` are the prompt's and the answer's estimates,
        and the request is counted in ``estimated_usage`` so the stats say so.
        """
        pair = reply.usage_pair(usage)
        ticket = _TICKET.get()
        if pair is not None:
            prompt, completion = pair
            self.stats.add_tokens(model, prompt, completion)
            self.stats.time_tokens(prompt + completion)
            thought = reply.reasoning_tokens(usage)  # already inside completion: billed, and counted, once
            if thought:
                self.stats.count("reasoning_tokens", thought)
            if ticket is not None:
                ticket.used.append((prompt, completion))
            return
        if estimate is None:
            return
        prompt, worst = estimate
        answered = sum(estimate_tokens(t) for t in texts or () if isinstance(t, str))
        self.stats.add_tokens(model, prompt, answered)
        self.stats.count("estimated_usage")
        if ticket is not None:
            ticket.used.append((prompt, worst))

    # ---- the public API -----------------------------------------------------------------
    def request_key(self, kind: str, model: str, body: Any, params: dict, n: int) -> dict:
        """Everything that determines the answer, and nothing else (no key, no timeout)."""
        return {"kind": kind, "provider": self.provider, "api_base": self.endpoint_id, "model": model,
                "body": body, "params": params, "n": n}

    async def query_model(self, *, messages: Iterable, model: str,
                          conversation_formatter: ConversationFormatter | None = None,
                          max_tokens: int | None = None, n: int | None = 1, seed: int | None = None,
                          stop: str | None | list[str] = None, stream: bool = False,
                          temperature: float | None = None, top_k: int | None = None,
                          top_p: float | None = None, response_format: Any = None) -> list[str]:
        """Texts of ``n`` choices, without any reasoning. ``response_format`` (a JSON Schema dict or
        a pydantic model class) is sent in the backend's own form where it can constrain decoding and
        enters the cache key; the texts are returned unparsed (``structured_output.parse`` checks
        them). :meth:`query_answers` gives the reasoning too."""
        answers = await self.query_answers(
            messages=messages, model=model, conversation_formatter=conversation_formatter, max_tokens=max_tokens,
            n=n, seed=seed, stop=stop, stream=stream, temperature=temperature, top_k=top_k, top_p=top_p,
            response_format=response_format)
        return [a.text for a in answers]

    async def query_answers(self, *, messages: Iterable, model: str,
                            conversation_formatter: ConversationFormatter | None = None,
                            max_tokens: int | None = None, n: int | None = 1, seed: int | None = None,
                            stop: str | None | list[str] = None, stream: bool = False,
                            temperature: float | None = None, top_k: int | None = None,
                            top_p: float | None = None, response_format: Any = None,
                            reasoning_effort: str | None = None, thinking_budget: int | None = None,
                            tools: list | None = None, tool_choice: Any = None) -> list[reply.Answer]:
        """:meth:`query_model`'s ``n`` choices as :class:`~recipe.clients.reply.Answer` objects:
        the text and, apart, the reasoning (None when the model gave none) and the tool calls (with
        ``tools``, OpenAI's tool JSON Schemas, and ``tool_choice``). Cached together."""
        messages = list(messages)
        n = 1 if n is None else int(n)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        params = self._sampling(max_tokens, seed, stop, temperature, top_k, top_p, reasoning_effort, thinking_budget)
        if tools:
            params["tools"] = list(tools)
            if tool_choice is not None:
                params["tool_choice"] = tool_choice
        text = conversation_formatter is not None
        route = self._route(text)
        if conversation_formatter is not None:
            body: Any = conversation_formatter.format_conversation(messages)
            payload_key = "prompt"
        else:
            body, payload_key = messages, "messages"
        schema = structured.as_schema(response_format)
        wire = structured.wire_params(self.structured_dialect, schema, text) if schema else {}

        async def produce() -> list[dict]:
            payload = {payload_key: body, **self._wire_kwargs(route, n, params, wire)}
            answers = await self._send(route, model, payload, stream, text)
            if len(answers) < n:
                answers += await self._top_up(route, model, body, payload_key, params, n - len(answers), stream, text,
                                              wire)
            return reply.stored_answers(answers[:n])  # the cache keeps answer and reasoning together

        key_params = {**params, "response_format": schema.key()} if schema else dict(params)
        if self.extra_body:
            key_params["extra_body"] = self.extra_body  # e.g. enable_thinking: another answer
        stored = await self._cached(self.request_key("text" if text else "chat", model, body, key_params, n), produce)
        return reply.cached_answers(stored)

    async def _top_up(self, route, model, body, payload_key, params, missing, stream, text,
                      wire=None) -> list[reply.Answer]:
        """Servers that ignore ``n`` get the missing choices as further requests, seeds shifted."""
        calls = []
        for i in range(1, missing + 1):
            extra = dict(params)
            if extra.get("seed") is not None:
                extra["seed"] = extra["seed"] + i
            payload = {payload_key: body, **self._wire_kwargs(route, 1, extra, wire)}
            calls.append(self._send(route, model, payload, stream, text))
        return [t[0] for t in await asyncio.gather(*calls)]

    async def query_reward_model(self, *, messages: Iterable, model: str,
                                 conversation_formatter: ConversationFormatter | None = None) -> dict:
        """Scores of the conversation's last assistant turn.

        ``conversation_formatter`` is accepted for the interface's sake and unused: NVIDIA's
        reward models only take chat messages.
        """
        messages = list(messages)
        route = self._route(False)
        payload = {"messages": messages, **self._endpoint_kwargs(route)}

        async def once() -> dict:
            response = await send(**_at_replica(payload))
            self._record_usage(reply.field(response, "usage"), model, (estimate_tokens(messages), 1))
            try:
                return parse_reward_scores(response, self.provider)
            except ValueError as exc:
                raise ValueError(f"{model}: {exc}") from None

        async def produce() -> dict:
            prompt_tokens = estimate_tokens(messages)
            charge = (model, prompt_tokens, 1) if self.budget is not None else None
            return await self._with_retries(prompt_tokens + 1, once, charge)

        send = self._caller(route, model)
        return await self._cached(self.request_key("reward", model, messages, {}, 1), produce)


class LiteLLMClient(LLMClient):
    """The synchronous face of :class:`AsyncLiteLLMClient`; takes the same arguments."""

    def __init__(self, **kwargs: Any):
        self._async = AsyncLiteLLMClient(**kwargs)

    @property
    def stats(self) -> UsageStats:
        return self._async.stats

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncLiteLLMClient", "LiteLLMClient")

    def query_model(self, *, messages: Iterable, model: str,
                    conversation_formatter: ConversationFormatter | None = None,
                    max_tokens: int | None = None, n: int | None = 1, seed: int | None = None,
                    stop: str | None | list[str] = None, stream: bool = False,
                    temperature: float | None = None, top_k: int | None = None,
                    top_p: float | None = None, response_format: Any = None) -> list[str]:
        return run_sync(self._async.query_model(
            messages=messages, model=model, conversation_formatter=conversation_formatter,
            max_tokens=max_tokens, n=n, seed=seed, stop=stop, stream=stream,
            temperature=temperature, top_k=top_k, top_p=top_p, response_format=response_format))

    def query_answers(self, **kwargs: Any) -> list[reply.Answer]:
        """The answers with their reasoning apart (see :meth:`AsyncLiteLLMClient.query_answers`)."""
        return run_sync(self._async.query_answers(**kwargs))

    def query_reward_model(self, *, messages: Iterable, model: str,
                           conversation_formatter: ConversationFormatter | None = None) -> dict:
        return run_sync(self._async.query_reward_model(
            messages=messages, model=model, conversation_formatter=conversation_formatter))
