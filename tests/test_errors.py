"""Every failure surfaces as one of the package's own errors: mapped, redacted, picklable, retried."""

from __future__ import annotations

import inspect
import json
import pickle

import httpx
import pytest

from recipe import errors
from recipe.services.error_mapping import _LITELLM_TABLE, translate
from recipe.services.formatters import NemotronFormatter
from recipe.services.litellm_client import LiteLLMClient
from recipe.services.litellm_setup import get_litellm
from recipe.services.llamacpp_server import free_port

KEY = "sk-supersecret-abcdef123456"
MESSAGES = [{"role": "user", "content": "hello there"}]

EXPECTED_TABLE = {
    "ContextWindowExceededError": errors.ContextWindowError,
    "UnsupportedParamsError": errors.UnsupportedParamError,
    "AuthenticationError": errors.AuthenticationError,
    "PermissionDeniedError": errors.AuthenticationError,
    "RateLimitError": errors.RateLimitError,
    "Timeout": errors.TimeoutError,
    "APIConnectionError": errors.ConnectionError,
    "APIResponseValidationError": errors.MalformedResponseError,
    "ServiceUnavailableError": errors.ServerError,
    "BadGatewayError": errors.ServerError,
    "InternalServerError": errors.ServerError,
    "NotFoundError": errors.BadRequestError,
    "UnprocessableEntityError": errors.BadRequestError,
    "BadRequestError": errors.BadRequestError,
}
ALL_LLM_ERRORS = [errors.LLMError, errors.AuthenticationError, errors.BadRequestError, errors.ContextWindowError,
                  errors.UnsupportedParamError, errors.RateLimitError, errors.TimeoutError, errors.ConnectionError,
                  errors.ServerError, errors.MalformedResponseError]
RETRYABLE = {errors.RateLimitError, errors.TimeoutError, errors.ConnectionError, errors.ServerError,
             errors.MalformedResponseError}


def build_litellm_exception(name: str, message: str, headers: dict | None = None) -> BaseException:
    """Construct litellm's exception ``name`` with whatever its constructor requires."""
    litellm = get_litellm()
    cls = getattr(litellm, name, None) or getattr(litellm.exceptions, name)
    params = inspect.signature(cls.__init__).parameters
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    kwargs = {"message": message, "llm_provider": "openai", "model": "gpt-x"}
    if "response" in params:
        kwargs["response"] = httpx.Response(400, headers=headers or {}, request=request)
    if "request" in params:
        kwargs["request"] = request
    if "headers" in params and headers:
        kwargs["headers"] = headers
    return cls(**{k: v for k, v in kwargs.items() if k in params})


# ---- the mapping table -----------------------------------------------------------------------


def test_the_table_covers_exactly_the_expected_classes():
    assert dict(_LITELLM_TABLE) == EXPECTED_TABLE


@pytest.mark.parametrize("name", list(EXPECTED_TABLE))
def test_each_litellm_exception_maps_to_its_package_class(name):
    exc = build_litellm_exception(name, f"upstream says no ({name}) key={KEY}")
    mapped = translate(exc, provider="openai", secrets=(KEY,))
    assert type(mapped) is EXPECTED_TABLE[name]
    assert isinstance(mapped, errors.LLMError) and isinstance(mapped, errors.RecipeError)
    assert f"upstream says no ({name})" in str(mapped)
    assert KEY not in str(mapped) and KEY.encode() not in pickle.dumps(mapped)
    assert mapped.retryable == (EXPECTED_TABLE[name] in RETRYABLE)


def test_rate_limit_retry_after_read_from_headers():
    exc = build_litellm_exception("RateLimitError", "slow down", headers={"retry-after": "7"})
    mapped = translate(exc, provider="openai")
    assert type(mapped) is errors.RateLimitError and mapped.retry_after == 7.0


@pytest.mark.parametrize("exc, expected", [
    (json.JSONDecodeError("Expecting value", "<html>", 0), errors.MalformedResponseError),
    (ConnectionRefusedError(111, "Connection refused"), errors.ConnectionError),
    (TimeoutError("read timed out"), errors.TimeoutError),
    (RuntimeError("something odd"), errors.ServerError),
])
def test_non_litellm_exceptions_map_too(exc, expected):
    assert type(translate(exc, provider="p")) is expected


def test_package_errors_pass_through_unchanged():
    exc = errors.ContextWindowError("too long")
    assert translate(exc, provider="p") is exc


def test_nested_litellm_prefixes_are_stripped_from_the_message():
    exc = build_litellm_exception("ContextWindowExceededError", "This model's maximum context length is 10")
    text = str(translate(exc, provider="openai"))
    assert text.startswith("openai: ") and "maximum context length is 10" in text
    assert "litellm." not in text


# ---- pickling -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_LLM_ERRORS)
def test_each_error_class_pickles_to_the_same_class_and_message(cls):
    exc = cls("provider: something failed", 1.5)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls and str(back) == str(exc) == "provider: something failed"
    assert back.retry_after == 1.5 and back.retryable == cls.retryable
    assert isinstance(back, errors.LLMError)


@pytest.mark.parametrize("cls", [errors.RecipeError, errors.ConfigError, errors.InputError, errors.ParseError])
def test_other_package_errors_pickle(cls):
    back = pickle.loads(pickle.dumps(cls("bad thing")))
    assert type(back) is cls and str(back) == "bad thing"


def test_redact_removes_key_shapes():
    text = errors.redact(f"Bearer {KEY} api_key=abc123xyz nvapi-ABCDEFGH12345 {KEY}", (KEY,))
    assert KEY not in text and "nvapi-ABCDEFGH12345" not in text and "abc123xyz" not in text


# ---- real errors from the stub -------------------------------------------------------------


def client(server, provider="openai", **kwargs) -> LiteLLMClient:
    kwargs.setdefault("num_retries", 0)
    return LiteLLMClient(provider=provider, api_base=server.base_url, api_key=KEY, backoff_base=0.01, **kwargs)


@pytest.mark.parametrize("provider", ["openai", "hosted_vllm", "nvidia_nim"])
@pytest.mark.parametrize("formatted", [False, True], ids=["chat", "text"])
def test_401_is_authentication_error_without_the_key(stub_server, provider, formatted):
    server = stub_server(api_key="the-right-key-000")
    with pytest.raises(errors.AuthenticationError) as info:
        client(server, provider, num_retries=3).query_model(
            messages=MESSAGES, model="m", conversation_formatter=NemotronFormatter() if formatted else None)
    exc = info.value
    assert "Incorrect API key provided" in str(exc)
    assert KEY not in str(exc) and KEY not in repr(exc)
    data = pickle.dumps(exc)
    assert KEY.encode() not in data
    back = pickle.loads(data)
    assert type(back) is errors.AuthenticationError and str(back) == str(exc)
    assert server.stats()["requests"] == 1  # not retryable
    assert server.stats()["auth_headers"] == [f"Bearer {KEY}"]  # the key was sent, only not leaked


@pytest.mark.parametrize("provider", ["openai", "nvidia_nim"])
def test_429_is_rate_limit_error_with_retry_after(stub_server, provider):
    server = stub_server(fail_429=1.0, retry_after=0.1)
    with pytest.raises(errors.RateLimitError) as info:
        client(server, provider, num_retries=2).query_model(messages=MESSAGES, model="m")
    assert info.value.retry_after == pytest.approx(0.1)
    assert "Rate limit reached" in str(info.value)
    assert server.stats()["requests"] == 3  # 1 + num_retries, no hidden SDK retries
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is errors.RateLimitError and back.retry_after == pytest.approx(0.1)


@pytest.mark.parametrize("provider", ["openai", "hosted_vllm", "nvidia_nim"])
def test_context_length_is_context_window_error_not_retried(stub_server, provider):
    server = stub_server(context_length=20)
    with pytest.raises(errors.ContextWindowError) as info:
        client(server, provider, num_retries=3).query_model(messages=MESSAGES, model="m", max_tokens=100)
    assert "maximum context length is 20" in str(info.value)
    assert isinstance(info.value, errors.BadRequestError)
    assert server.stats()["requests"] == 1


@pytest.mark.parametrize("provider", ["openai", "hosted_vllm", "nvidia_nim"])
@pytest.mark.parametrize("fault, expected", [
    ("fail_500", errors.ServerError), ("drop", errors.ConnectionError), ("malformed", errors.MalformedResponseError)])
@pytest.mark.parametrize("formatted", [False, True], ids=["chat", "text"])
def test_retryable_faults_are_retried_num_retries_times(stub_server, provider, fault, expected, formatted):
    server = stub_server(**{fault: 1.0})
    c = client(server, provider, num_retries=2)
    with pytest.raises(expected) as info:
        c.query_model(messages=MESSAGES, model="m", conversation_formatter=NemotronFormatter() if formatted else None)
    assert info.value.retryable
    assert server.stats()["requests"] == 3  # exactly 1 + num_retries: no SDK retries underneath
    stats = c.stats.as_dict()
    assert stats["requests"] == 3 and stats["retries"] == 2 and stats["failures"] == {expected.__name__: 1}
    assert type(pickle.loads(pickle.dumps(info.value))) is expected


def test_transient_faults_recover_within_retries(stub_server):
    server = stub_server(fail_500=0.5)  # the stub alternates: ok, 500, ok, 500, ...
    c = client(server, num_retries=1)
    outs = [c.query_model(messages=MESSAGES, model="m") for _ in range(2)]
    assert outs == [["echo: hello there"]] * 2
    assert server.stats()["requests"] == 3  # the second call's 500 was retried once
    stats = c.stats.as_dict()
    assert stats["requests"] == 3 and stats["retries"] == 1 and stats["failures"] == {}


def test_reward_path_is_retried_and_not_multiplied_on_nim(stub_server):
    server = stub_server(fail_500=1.0, reward=True)
    with pytest.raises(errors.ServerError):
        client(server, "nvidia_nim", num_retries=1).query_reward_model(messages=MESSAGES, model="r")
    assert server.stats()["requests"] == 2


def test_timeout_is_timeout_error(stub_server):
    server = stub_server(latency=3.0)
    c = LiteLLMClient(provider="openai", api_base=server.base_url, api_key=KEY, timeout=0.5, num_retries=0)
    with pytest.raises(errors.TimeoutError) as info:
        c.query_model(messages=MESSAGES, model="m")
    assert info.value.retryable


@pytest.mark.parametrize("provider", ["openai", "nvidia_nim", "hosted_vllm"])
def test_closed_port_is_connection_error(provider):
    c = LiteLLMClient(provider=provider, api_base=f"http://127.0.0.1:{free_port()}/v1", api_key=KEY,
                      num_retries=1, backoff_base=0.01)
    with pytest.raises(errors.ConnectionError) as info:
        c.query_model(messages=MESSAGES, model="m")
    assert KEY not in str(info.value)
    assert c.stats.as_dict()["retries"] == 1  # retryable, so retried once


def test_json_decode_error_raised_inside_a_request_is_retried_as_malformed(monkeypatch):
    """ValueErrors normally pass through (caller mistakes), but a JSONDecodeError is a bad reply."""
    litellm = get_litellm()
    calls = []

    async def broken(**kwargs):
        calls.append(kwargs)
        raise json.JSONDecodeError("Expecting value", "data: {broken", 6)

    monkeypatch.setattr(litellm, "acompletion", broken)
    # ollama stays on litellm.acompletion; the lean path's malformed replies are the stub's "malformed" fault.
    c = LiteLLMClient(provider="ollama", api_base="http://127.0.0.1:9", num_retries=2, backoff_base=0.01)
    with pytest.raises(errors.MalformedResponseError):
        c.query_model(messages=MESSAGES, model="m")
    assert len(calls) == 3


def test_unsupported_top_k_is_a_clear_error_not_a_silent_drop(monkeypatch):
    """If litellm refuses top_k for a provider, the caller sees UnsupportedParamError naming it."""
    litellm = get_litellm()

    async def refuse(**kwargs):
        assert kwargs.get("top_k") == 4 or kwargs.get("extra_body", {}).get("top_k") == 4
        raise litellm.UnsupportedParamsError(message="some_provider does not support parameters: ['top_k']",
                                             llm_provider="some_provider", model="m")

    monkeypatch.setattr(litellm, "acompletion", refuse)
    c = LiteLLMClient(provider="some_provider", api_base="http://127.0.0.1:9/v1", num_retries=3)
    with pytest.raises(errors.UnsupportedParamError, match="top_k"):
        c.query_model(messages=MESSAGES, model="m", top_k=4)
