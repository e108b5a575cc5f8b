"""The lean path for OpenAI-compatible providers: litellm builds the request, aiohttp sends it.

``litellm.acompletion`` spends more CPU around a request than the request itself costs
(provider resolution, ``function_setup``, a logging object, pricing every response:
bench/RESULTS.md). For providers that speak OpenAI's JSON over plain HTTP, litellm's own
provider configuration still decides everything that matters - which parameters the provider
takes (``get_supported_openai_params``, ``map_openai_params``), the body (``transform_request``,
``transform_extra_body``), the URL (``get_complete_url``), the headers
(``validate_environment``) and what an error status means (``get_error_class`` then
``exception_type``, so the package's one table in :mod:`recipe.clients.error_mapping` maps
it) - but it is looked up once per route, not on every call, and the request goes out on one
shared aiohttp session per event loop.

Providers without such a configuration, or whose requests must be signed (Bedrock, Vertex),
keep ``litellm.acompletion``: :func:`takes_lean_path` says which is which.

Responses are read as the JSON the server sent (a dict per answer, a dict per stream chunk):
for these providers litellm's ``transform_response`` only turns that same JSON into pydantic
objects, after a logging call, and the client reads three fields of it. Server-sent events
are split here for the same reason (a dozen lines; the provider's stream iterator builds an
object per chunk and drops the ``text`` field of text completions).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import threading
import weakref
from collections.abc import AsyncIterator
from typing import Any

from recipe.clients import providers

# Everything a payload may carry that is about the connection, not the request body.
_ENDPOINT_KEYS = ("api_base", "api_key", "timeout", "max_retries", "allowed_openai_params", "extra_body")
_USER_AGENT = "recipe (lean_http; aiohttp)"  # says which path sent a request (tests/test_lean_path.py)


def takes_lean_path(route: str) -> bool:
    """Whether ``route`` (litellm's provider prefix) goes through :class:`LeanRoute` (the providers table says)."""
    return providers.route(route).lean


class LeanRoute:
    """One provider route and model, resolved once: call it with litellm's keyword arguments.

    ``await route(messages=..., stream=False, api_base=..., api_key=..., timeout=..., max_tokens=...,
    extra_body={...})`` returns the response JSON as a dict (or, with ``stream=True``, an async
    iterator of chunk dicts), exactly as ``litellm.acompletion(model="route/model", ...)`` would
    send it. The endpoint keys of the first call fix the URL and headers (a client never changes them);
    the timeout is read on every call.
    """

    def __init__(self, route: str, model: str, text: bool = False):
        from recipe.clients.litellm_setup import get_litellm

        litellm = get_litellm()
        from litellm.types.utils import LlmProviders
        from litellm.utils import ProviderConfigManager

        self.route, self.model, self.text = route, model, text
        self._litellm = litellm
        provider = LlmProviders(route)
        self.config: Any  # a text-completion or a chat config: litellm types them apart, we call either
        if text:
            self.config = ProviderConfigManager.get_provider_text_completion_config(model=model, provider=provider)
        else:
            self.config = ProviderConfigManager.get_provider_chat_config(model=model, provider=provider)
        if self.config is None:
            raise ValueError(f"litellm has no provider configuration for {route}/{model}")
        self._supported = frozenset(self.config.get_supported_openai_params(model=model))
        self._resolved: dict[tuple, tuple] = {}  # per (api_base, api_key): replicas differ in the first
        self._client_timeout: Any = None  # an aiohttp.ClientTimeout, made on first use

    def _resolve(self, api_base: str | None, api_key: str | None) -> tuple:
        """URL, headers and proxy, from litellm's provider resolution and configuration (once)."""
        _, _, dynamic_key, dynamic_base = self._litellm.get_llm_provider(
            model=f"{self.route}/{self.model}", api_base=api_base, api_key=api_key)
        known = providers.route(self.route)
        api_base = (api_base or dynamic_base or self._litellm.api_base or providers.first_env(known.env_base)
                    or known.default_base)
        api_key = api_key or dynamic_key or self._litellm.api_key or providers.first_env(known.env_key)
        if not api_base:
            raise self._litellm.exceptions.BadRequestError(
                message=f"no api_base for {self.route}/{self.model}", model=self.model, llm_provider=self.route)
        if api_key is None and self.route in ("openai", "text-completion-openai"):
            # What the OpenAI SDK says inside litellm; error_mapping reads it as an authentication error.
            raise self._litellm.exceptions.AuthenticationError(
                message="The api_key client option must be set", model=self.model, llm_provider=self.route)
        headers = self.config.validate_environment(headers={}, model=self.model, messages=[], optional_params={},
                                                   litellm_params={}, api_key=api_key, api_base=api_base)
        if self.text:  # the text-completion configs leave the path to the OpenAI SDK: /completions
            url = api_base.rstrip("/")
            url = url if url.endswith("/completions") else url + "/completions"
        else:
            url = self.config.get_complete_url(api_base=api_base, api_key=api_key, model=self.model,
                                               optional_params={}, litellm_params={}, stream=False)
        headers = {"User-Agent": _USER_AGENT, **headers}
        return url, headers, _env_proxy(url)

    def _timeout(self, seconds: float):
        import aiohttp

        if self._client_timeout is None or self._client_timeout.total != seconds:
            self._client_timeout = aiohttp.ClientTimeout(total=seconds)
        return self._client_timeout

    def build(self, payload: dict) -> dict:
        """The request body litellm's configuration makes of ``payload`` (litellm's keywords)."""
        params = {k: v for k, v in payload.items() if k not in _ENDPOINT_KEYS}
        body_in = params.pop("prompt" if self.text else "messages")
        params.pop("stream", None)  # set by the caller below; litellm sends no "stream": false either
        allowed = payload.get("allowed_openai_params") or ()
        unsupported = [k for k in params if k not in self._supported and k not in allowed]
        if unsupported:  # what litellm's get_optional_params refuses (drop_params stays off)
            raise self._litellm.UnsupportedParamsError(
                message=f"{self.route} does not support parameters: {unsupported}, for model={self.model}.",
                model=self.model, llm_provider=self.route)
        extra_allowed = {k: params.pop(k) for k in list(params) if k not in self._supported}
        optional = self.config.map_openai_params(non_default_params=params, optional_params={}, model=self.model,
                                                 drop_params=False)
        optional.update(extra_allowed)
        if self.text:
            body = self.config.transform_text_completion_request(
                model=self.model, messages=[{"role": "user", "content": body_in}], optional_params=optional,
                headers={})
        else:
            body = self.config.transform_request(model=self.model, messages=body_in, optional_params=optional,
                                                 litellm_params={}, headers={})
        extra_body = payload.get("extra_body")
        if extra_body:
            body = {**body, **self.config.transform_extra_body(extra_body=extra_body, request=body, model=self.model,
                                                               litellm_params={})}
        return body

    async def __call__(self, **payload: Any) -> Any:
        where = (payload.get("api_base"), payload.get("api_key"))
        resolved = self._resolved.get(where)
        if resolved is None:
            resolved = self._resolved[where] = self._resolve(*where)
        url, headers, (proxy, proxy_auth) = resolved
        timeout = self._timeout(float(payload.get("timeout") or 600))  # per call: the caller may shorten it
        stream = bool(payload.get("stream"))
        body = self.build(payload)
        if stream:
            body["stream"] = True
        session = await shared_session()
        try:
            response = await session.post(url, data=json.dumps(body), headers=headers, timeout=timeout,
                                          proxy=proxy, proxy_auth=proxy_auth)
        except Exception as exc:
            raise self._mapped(exc) from None
        if response.status >= 400:
            async with response:
                text = await response.text(errors="replace")
            raise self.error_for(response.status, text, dict(response.headers))
        if stream and response.content_type != "application/json":
            return self._events(response)
        async with response:
            try:
                raw = await response.read()
            except Exception as exc:
                raise self._mapped(exc) from None
        answer = json.loads(raw)  # a JSONDecodeError is a malformed reply: the client retries it
        return _one_chunk(answer) if stream else answer  # a stream asked, a JSON body (an error) answered

    async def _events(self, response) -> AsyncIterator[dict]:
        """Chunk dicts of a server-sent-events stream, until ``[DONE]`` or the end of the body.

        Each event is decoded as UTF-8 with ``surrogateescape``: a character whose bytes the server
        split across two events survives as escaped bytes, and the client puts it together again
        (:func:`recipe.clients.reply.whole_text`). Only the transport's failures are mapped as
        litellm's; an event carrying ``{"error": ...}`` is passed on for the client to read.
        """
        async with response:
            lines = response.content.__aiter__()
            while True:
                try:
                    line = await lines.__anext__()
                except StopAsyncIteration:
                    return
                except Exception as exc:  # the transport: a dropped connection, a cut chunked body
                    raise self._mapped(exc) from None
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                yield json.loads(data.decode("utf-8", "surrogateescape"))  # a JSONDecodeError: malformed

    def supports(self, param: str) -> bool:
        """Whether litellm's configuration of this route takes the OpenAI parameter ``param``."""
        return param in self._supported

    def error_for(self, status: int, text: str, headers: dict | None = None) -> BaseException:
        """litellm's exception for an error answer (its HTTP status and body), as ``acompletion``
        would raise it: also how a batch line's error is read (recipe.clients.batch)."""
        return self._mapped(self.config.get_error_class(error_message=_error_message(text), status_code=status,
                                                        headers=headers or {}))

    def _mapped(self, exc: BaseException) -> BaseException:
        """litellm's exception for ``exc``, as ``acompletion`` would raise it (one table maps it next)."""
        if isinstance(exc, asyncio.TimeoutError):
            return exc  # error_mapping: RequestTimeoutError
        try:
            mapped = self._litellm.exception_type(model=self.model, original_exception=exc,
                                                  custom_llm_provider=self.route)
        except Exception as raised:  # exception_type raises the mapped exception
            mapped = raised
        return mapped if isinstance(mapped, BaseException) else exc


async def _one_chunk(answer: Any) -> AsyncIterator[Any]:
    """A JSON body sent in answer to a stream request, as a stream of that one chunk."""
    yield answer


def _error_message(text: str) -> str:
    """The server's own words from an OpenAI-style error body, as the OpenAI SDK reports them."""
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return error if isinstance(error, str) else text


def _env_proxy(url: str) -> tuple:
    """The proxy the environment names for ``url`` (HTTP_PROXY, NO_PROXY, ~/.netrc), or (None, None).

    Looked up once per route: with ``trust_env`` aiohttp re-reads the whole environment and
    ~/.netrc on every request (about half of the event loop's CPU in the profile, RESULTS.md).
    """
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    try:
        return get_env_proxy_for_url(URL(url))
    except LookupError:
        return None, None


# ---- one aiohttp session per event loop ---------------------------------------------------

_sessions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple]" = weakref.WeakKeyDictionary()
_sessions_lock = threading.Lock()


async def _closer(session) -> AsyncIterator[None]:
    """Suspended for the session's life; ``asyncio.run`` closes it at loop shutdown (shutdown_asyncgens)."""
    try:
        yield
    finally:
        await session.close()


async def shared_session():
    """This event loop's aiohttp session (created on first use).

    The connector has no cap of its own: each client's gate bounds requests in flight, so the
    pool holds as many keep-alive connections as the concurrency, never more.
    """
    import aiohttp

    loop = asyncio.get_running_loop()
    entry = _sessions.get(loop)
    if entry is not None and not entry[0].closed:
        return entry[0]
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))  # proxies: _env_proxy
    closer = _closer(session)
    await closer.__anext__()
    with _sessions_lock:
        _sessions[loop] = (session, closer)
    return session


def _close_background_sessions() -> None:
    """At exit, close the sessions of loops that never shut down (the process's background loop)."""
    for loop, (session, _) in list(_sessions.items()):
        if session.closed or loop.is_closed() or not loop.is_running():
            continue
        try:
            asyncio.run_coroutine_threadsafe(session.close(), loop).result(timeout=5)
        except Exception:  # best effort: the process is ending anyway
            pass


atexit.register(_close_background_sessions)
